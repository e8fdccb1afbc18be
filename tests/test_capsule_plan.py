"""capsule.plan_pack then capsule.write_capsule: what pack() does, in two steps.

The plan reads the tree and the member files and writes nothing; writing the plan gives the
capsule pack() gives for the same arguments.
"""

import os
from pathlib import Path

import pytest

from perceus import capsule

from tests.support.capsule_trees import make_tree


@pytest.fixture
def tree(tmp_path: Path, needs_root: None) -> Path:
    """The busybox tree, /dev/console included: plan and pack must give the same capsule of it."""
    return make_tree(tmp_path / "tree")


def test_the_plan_says_what_will_be_written_and_writes_nothing(tmp_path: Path, tree: Path) -> None:
    scripts = tmp_path / "scripts" / "init"
    scripts.mkdir(parents=True)
    (scripts / "10-hello").write_text("#!/bin/sh\n")
    os.chmod(scripts / "10-hello", 0o755)
    out = tmp_path / "out"
    out.mkdir()
    plan = capsule.plan_pack(
        tree,
        out,
        capsule.Meta("node", "1.0"),
        kernel=False,
        files={"config": 'KERNEL_ARGS="console=ttyS0 quiet"\n'},
        nodescripts=tmp_path / "scripts",
        options=capsule.PackOptions(chunk_size=64 << 10),
    )
    assert list(out.iterdir()) == []
    assert plan.out == out / "node-1.0-1.stateless.x86_64.vnfs"
    assert (plan.meta.arch, plan.meta.os, plan.meta.kernel_args) == (
        "x86_64",
        "debian-12",
        "console=ttyS0 quiet",
    )
    assert sorted(plan.members) == ["config", "hybridize", "livesync.skip", "nodescripts/init/10-hello"]
    assert plan.members["nodescripts/init/10-hello"] == capsule.plan.SmallMember(b"#!/bin/sh\n", 0o755)
    assert plan.root == tree and plan.kernel is None and plan.kernel_version is None

    manifest = capsule.write_capsule(plan)
    assert capsule.verify(plan.out) == manifest
    assert manifest.kernel_args == "console=ttyS0 quiet" and manifest.rootfs.usize > 0
    assert sorted(p.name for p in out.iterdir()) == [plan.out.name]  # no part file left


def test_written_plan_and_pack_give_the_same_capsule(tmp_path: Path, tree: Path, monkeypatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    meta = capsule.Meta("node", "1.0", kernel_args="quiet")
    capsule.pack(tree, tmp_path / "a.vnfs", meta, kernel=False, threads=1)
    capsule.write_capsule(
        capsule.plan_pack(
            tree, tmp_path / "b.vnfs", meta, kernel=False, options=capsule.PackOptions(threads=1)
        )
    )
    assert (tmp_path / "a.vnfs").read_bytes() == (tmp_path / "b.vnfs").read_bytes()


def test_config_text_quotes_what_it_writes(tmp_path: Path, tree: Path) -> None:
    """A kernel argument with a quote or a dollar reads back exactly as given."""
    args = 'quiet init="/sbin/init" x=$HOME'
    plan = capsule.plan_pack(
        tree, tmp_path / "c.vnfs", capsule.Meta("node", "1.0", kernel_args=args), kernel=False
    )
    assert capsule.read_config(plan.members["config"].data.decode())["KERNEL_ARGS"] == args
