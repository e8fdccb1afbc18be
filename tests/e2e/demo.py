"""``make demo``: a node PXE-boots and is provisioned, for a person to watch.

Everything runs on this machine, inside a throwaway network namespace: a perceus master
(perceusd and dnsmasq on a private bridge), stage one built from Debian's kernel, a small
busybox VNFS, and one QEMU node (software emulation) that boots from the network. The
demo prints each command as it runs it, then ``perceus node status`` whenever the node's
state changes, from ``init`` to ``ready``. The node's serial console is saved to a file.
"""

import re
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: tests.support

from tests.support import cluster  # noqa: E402
from tests.support.lab import Lab  # noqa: E402

MAC = "52:54:00:de:00:01"
# Console lines worth showing as the node boots (the rest is the kernel's chatter).
STORY = re.compile(
    r"(iPXE \d[\w.+-]*|PXELINUX \S+|Loading perceus/\S+|perceus: (stage one|loaded|NodeID|booting).*|"
    r"perceus-runtime: .*|provisiond: .*|PERCEUS-RUNTIME-READY.*)"
)
TIMEOUT = 300.0
BOLD, PLAIN = ("\033[1m", "\033[0m") if sys.stdout.isatty() else ("", "")


def say(text: str) -> None:
    print(f"\n{BOLD}{text}{PLAIN}", flush=True)


def show(master: cluster.Master, *args: str) -> str:
    say(f"# perceus {shlex.join(args)}")
    out = master.perceus(*args)
    print(out.rstrip(), flush=True)
    return out


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="perceus-demo."))
    console = work / "node-console.log"
    print(f"perceus demo: working in {work}")
    say(f"# perceus stage1 build -o {work}/stage1.img --kernel-root {cluster.KERNEL_ROOT}")
    stage1, report = cluster.build_stage1(work / "stage1.img")
    print(report.rstrip(), flush=True)
    say("# a busybox VNFS capsule whose provisiond checks in 'ready' (perceus capsule pack)")
    capsule = cluster.runtime_capsule(stage1, work)
    print(f"{capsule} ({capsule.stat().st_size / 1048576:.1f} MiB)")
    kernel = cluster.KERNEL_ROOT / "boot" / f"vmlinuz-{cluster.kernel_version()}"
    with Lab(work / "lab") as lab:
        say(f"# a master in network namespace {lab.name}, bridge {lab.bridge} {lab.address}/24")
        master = cluster.Master(lab, work)
        show(master, "vnfs", "import", str(capsule), "--name", cluster.VNFS)
        show(master, "-y", "vnfs", "configure", cluster.VNFS, "--console", "ttyS0,115200")
        show(master, "module", "activate", "hostname")
        master.set_default_vnfs()
        say(f"# defaults.conf: Vnfs Name = {cluster.VNFS} (new nodes get it)")
        show(master, "configure", "tftp", "--kernel", str(kernel), "--initramfs", str(stage1))
        show(master, "configure", "dnsmasq", "--ipv6-ra")
        show(master, "service", "start")
        say(f"# power on a node (QEMU, MAC {MAC}) that boots from the network")
        started = time.monotonic()
        node = lab.qemu("node", mac=MAC, boot="pxe")
        last: list[list[str]] = []
        seen = 0
        while time.monotonic() - started < TIMEOUT:
            lines = node.console().splitlines()
            for line in lines[seen : len(lines) - 1]:  # the last line may be half written
                if STORY.search(line):
                    print(f"  [console] {STORY.search(line).group(0).strip()}", flush=True)
            seen = max(seen, len(lines) - 1)
            status = master.perceus("node", "status")
            rows = [line.split()[:2] for line in status.splitlines()[2:]]  # name, state: not the clock
            if rows != last:
                say(f"# perceus node status    ({time.monotonic() - started:.0f} s after power-on)")
                print(status.rstrip(), flush=True)
                last = rows
            if cluster.RUNTIME_MARKER in node.console() and " ready " in status:
                break
            if not node.running:
                break
            time.sleep(1.0)
        elapsed = time.monotonic() - started
        shutil.copyfile(node.console_log, console)
        ok = cluster.RUNTIME_MARKER in node.console()
        if ok:
            show(master, "node", "show", "n0000")
        master.stop()
    if ok:
        say(f"perceus demo: n0000 went from power-on to ready in {elapsed:.0f} s")
    else:
        say(f"perceus demo: the node did not reach ready in {elapsed:.0f} s")
    print(f"serial console of the node: {console}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
