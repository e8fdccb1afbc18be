"""Stage one at boot (PID 1 in the initramfs): network, check in ``init``, fetch, kexec.

Every failure ends in a clear ``perceus:`` console message; when no master answers in five
rounds the node counts down ten seconds and reboots (ENTER gives a shell), and with
``perceus.debug=3`` or more it opens a shell on the console right away.
"""

import asyncio
import logging
import os
import select
import subprocess
import sys
import time
from pathlib import Path

from perceus.stage1.boot import assemble_initrd, initrd_sinks, kernel_cmdline, kexec_boot
from perceus.stage1.cmdline import BootOptions, Master, parse_cmdline, parse_masters
from perceus.stage1.facts import gather_facts
from perceus.stage1.fetch import Download, hash_executor
from perceus.stage1.retry import NoMaster, RetryPolicy, Target, check_in_until_done
from perceus.stage1.scriptrun import ScriptEnv
from perceus.stage1.session import CheckIn

__all__ = ["SITE_KEY", "WORKDIR", "run_initramfs"]

log = logging.getLogger("perceus.stage1")

SITE_KEY = Path("/etc/perceus/site.key")  # baked in by `perceus stage1 build --site-key`
BAKED_MASTERS = Path("/etc/perceus/masterip")  # `perceus stage1 build --master`
WORKDIR = Path("/run/perceus")  # the initramfs root is RAM already
COUNTDOWN = 10
SHELL = "/bin/sh"


def _say(message: str) -> None:
    print(f"perceus: {message}", file=sys.stderr, flush=True)


def _mount_basics() -> None:
    """proc, sys and devtmpfs, which /init may already have mounted (then this is a no-op)."""
    for fstype, target in (("proc", "/proc"), ("sysfs", "/sys"), ("devtmpfs", "/dev")):
        if os.path.ismount(target):
            continue
        os.makedirs(target, exist_ok=True)
        subprocess.run(["mount", "-t", fstype, fstype, target], check=False)


def _shell() -> None:
    _say("starting a shell; leave it to continue")
    try:
        subprocess.run([SHELL], check=False)
    except OSError as exc:
        _say(f"no shell: {exc}")


def _reboot(cmd_name: str = "LINUX_REBOOT_CMD_RESTART") -> None:
    from perceus.native import sysio

    os.sync()
    try:
        sysio.reboot(getattr(sysio, cmd_name))
    except OSError as exc:
        _say(f"reboot failed: {exc}")
    while True:  # PID 1 must never exit
        _shell()
        time.sleep(1)


def fail(message: str, options: BootOptions) -> None:
    """The end of a failed boot: a shell at debug >= 3, else a countdown; then reboot."""
    _say(f"error: {message}")
    if options.debug >= 3:
        _shell()
    else:
        _say(f"rebooting in {COUNTDOWN} s; press ENTER for a shell")
        for left in range(COUNTDOWN, 0, -1):
            print(f"\rperceus: {left:2d} ", end="", file=sys.stderr, flush=True)
            try:
                ready, _, _ = select.select([sys.stdin], [], [], 1.0)
            except (OSError, ValueError):
                time.sleep(1.0)
                continue
            if ready and sys.stdin.readline() is not None:
                print(file=sys.stderr)
                _shell()
                break
        print(file=sys.stderr)
    _reboot()


def _site_key(path: Path | None) -> bytes | None:
    path = path or SITE_KEY
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _baked_masters(path: Path = BAKED_MASTERS) -> list[Master]:
    """The build's ``--master``, used when the kernel command line names none."""
    try:
        return list(parse_masters(path.read_text().strip()))
    except (OSError, ValueError):
        return []


async def _provision(options: BootOptions, site_key: bytes | None, policy: RetryPolicy):
    from perceus.stage1 import netup

    leases = await netup.bring_up(options.ifaces)
    masters = list(options.masters) or _baked_masters() or [Master(x.server) for x in leases if x.server]
    if not masters:
        raise NoMaster("no master: no masterip= on the kernel command line and no DHCP server answered")
    targets = [Target(m, x.address, x.iface) for m in masters for x in leases] or [Target(m) for m in masters]
    nodeid_iface = leases[0].iface if leases else None
    facts = gather_facts(nodeid_iface)
    _say(f"NodeID {facts.nodeid}; masters {', '.join(map(str, masters))}")
    WORKDIR.mkdir(parents=True, exist_ok=True)
    staging = WORKDIR / "destdir"
    staging.mkdir(exist_ok=True)
    download = Download(initrd_sinks(WORKDIR), hash_executor())
    req = CheckIn(
        state="init",
        facts=facts,
        env=ScriptEnv("initramfs", str(staging)),
        site_key=site_key,
        download=download,
        bye_reason="kexec",
    )
    try:
        outcome = await check_in_until_done(targets, req, policy)
    finally:
        download.close()
    return outcome, staging


def run_initramfs(site_key_path: Path | None = None, policy: RetryPolicy | None = None) -> int:
    """The whole boot; returns only if the kexec itself failed after a shell (never as PID 1)."""
    logging.basicConfig(level=logging.INFO, format="perceus: %(message)s", stream=sys.stderr)
    if os.getpid() == 1:
        _mount_basics()
    try:
        cmdline = Path("/proc/cmdline").read_text()
    except OSError:
        cmdline = ""
    options = parse_cmdline(cmdline)
    for warning in options.warnings:
        _say(f"warning: {warning}")
    try:
        from perceus.stage1 import netup

        loaded = netup.load_drivers(options.noload)
        if loaded:
            _say(f"loaded drivers: {' '.join(loaded)}")
        outcome, staging = asyncio.run(_provision(options, _site_key(site_key_path), policy or RetryPolicy()))
    except (NoMaster, LookupError, OSError) as exc:
        fail(str(exc), options)
        return 1
    assert outcome.assign is not None
    if outcome.request == "halt":
        _say("the nodescript asks to halt")
        _reboot("LINUX_REBOOT_CMD_POWER_OFF")
    if outcome.request in ("reboot", "reprovision"):
        _say(f"the nodescript asks to {outcome.request}")
        _reboot()
    if outcome.offer is None:
        fail(f"{outcome.assign.name} has no VNFS to boot", options)
        return 1
    offer = outcome.offer
    initrd = WORKDIR / "initrd"
    try:
        size = assemble_initrd(initrd, offer, staging)
        args = kernel_cmdline(offer.kernel_args, options)
        _say(f"booting {offer.vnfs} as {outcome.assign.name} (initrd {size} bytes): {args}")
        kexec_boot(WORKDIR / "kernel", initrd, args)
    except OSError as exc:
        fail(f"kexec failed: {exc}", options)
    return 1
