"""``perceus-stage1`` / ``provisiond`` / ``python -m perceus.stage1``: one program, three modes.

* initramfs (PID 1, or ``--mode initramfs``): stage one on a booting node;
* provisiond (``--mode provisiond``, or invoked as ``provisiond``): the runtime OS's check-ins;
* simulate (``--simulate DIR``): a harmless node for tests and benchmarks (left out of the
  frozen initramfs: there ``--simulate`` is refused in one line).

Bad input is one line ``perceus-stage1: error: ...`` (exit 2 for usage, 1 otherwise).
"""

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from perceus.stage1.cmdline import Master, parse_masters
from perceus.stage1.protocol import check_site_key
from perceus.stage1.retry import RetryPolicy

__all__ = ["main"]

MODES = ("initramfs", "provisiond", "simulate")
STATES = ("ready", "halt", "reboot", "boot")


class _Usage(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        raise _Usage(message)


def _positive(kind: type):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, not {text}")
        return value

    return parse


def _masters(text: str) -> tuple[Master, ...]:
    try:
        masters = parse_masters(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not masters:
        raise argparse.ArgumentTypeError("empty master list")
    return masters


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description="The Perceus node side: stage one, provisiond and the simulated node.")
    p.add_argument("--mode", choices=MODES, help="default: initramfs as PID 1, provisiond as 'provisiond'")
    p.add_argument("--simulate", metavar="DIR", type=Path, help="simulate a node under DIR (no root needed)")
    p.add_argument("--master", metavar="HOST[:PORT]", type=_masters, action="append", default=[],
                   help="master(s) to check in with (repeatable; comma lists); default port 987")  # fmt: skip
    p.add_argument("--site-key", metavar="FILE", type=Path, help="the site key (16-4096 bytes)")
    p.add_argument("--rounds", type=int, default=5, help="failed rounds before giving up (5)")
    p.add_argument("--round-backoff", type=_positive(float), default=2.0, metavar="S",
                   help="seconds after the first failed round, doubling up to 30 (2)")  # fmt: skip
    p.add_argument("--script-timeout", type=_positive(float), default=600.0, metavar="S")
    p.add_argument("--io-timeout", type=_positive(float), metavar="S", help="cap on protocol timeouts")
    p.add_argument("-q", "--quiet", action="store_true", help="only errors")
    sim = p.add_argument_group("simulate")
    sim.add_argument("--mac", help="the simulated node's MAC (default: random, locally administered)")
    sim.add_argument("--discard", action="store_true", help="verify the downloads but keep no bytes")
    sim.add_argument("--ready-checkins", type=int, default=1, metavar="N")
    sim.add_argument("--ready-interval", type=_positive(float), default=0.0, metavar="S")
    sim.add_argument("--timeout", type=_positive(float), metavar="S", help="bound on the whole run")
    pd = p.add_argument_group("provisiond")
    pd.add_argument("--config", type=Path, default=Path("/etc/perceus/node.conf"), metavar="FILE")
    pd.add_argument("--interval", type=int, metavar="S", help="seconds between ready check-ins")
    pd.add_argument("--once", metavar="STATE", help="check in once with STATE (halt, reboot, ...) and exit")
    pd.add_argument("--foreground", action="store_true", help="do not detach")
    pd.add_argument("--pidfile", type=Path, default=Path("/run/provisiond.pid"), metavar="FILE")
    pd.add_argument("--reboot-command", default="reboot", metavar="CMD")
    pd.add_argument("--poweroff-command", default="poweroff", metavar="CMD")
    return p


def _read_site_key(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return check_site_key(path.read_bytes())
    except OSError as exc:
        raise ValueError(f"cannot read the site key {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ValueError(f"site key {path}: {exc}") from None


def _mode(args: argparse.Namespace, prog: str) -> str:
    if args.simulate is not None:
        if args.mode not in (None, "simulate"):
            raise _Usage(f"--simulate and --mode {args.mode} do not go together")
        return "simulate"
    if args.mode == "simulate":
        raise _Usage("--mode simulate needs --simulate DIR")
    if args.mode:
        return args.mode
    if prog == "provisiond":
        return "provisiond"
    if os.getpid() == 1:
        return "initramfs"
    raise _Usage("choose a mode: --simulate DIR, --mode provisiond or --mode initramfs")


def _policy(args: argparse.Namespace) -> RetryPolicy:
    if args.rounds < 1:
        raise _Usage("--rounds must be at least 1")
    return RetryPolicy(rounds=args.rounds, backoff=args.round_backoff)


def _log_to_stderr(prefix: str, quiet: bool) -> None:
    logger = logging.getLogger("perceus.stage1")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{prefix}: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.ERROR if quiet else logging.INFO)
    logger.propagate = False


def _run_simulate(args: argparse.Namespace, prog: str) -> int:
    from perceus.stage1.facts import simulated_facts

    try:  # not frozen into the initramfs (buildroot.pyfreeze.EXCLUDED)
        from perceus.stage1.simulate import SimOptions, simulate_node
    except ModuleNotFoundError as exc:
        if exc.name != "perceus.stage1.simulate":
            raise
        raise ValueError("--simulate: this build of stage one has no simulated node") from None

    masters = tuple(m for group in args.master for m in group)
    if not masters:
        raise _Usage("--simulate needs --master HOST[:PORT]")
    if args.mac is not None:
        try:
            simulated_facts(args.mac).hello_fields()
            from perceus.stage1.protocol import Hello

            Hello(args.mac.upper(), "init")
        except Exception:
            raise _Usage(f"--mac {args.mac!r}: expected AA:BB:CC:DD:EE:FF") from None
    opts = SimOptions(
        masters=masters,
        simdir=args.simulate,
        discard=args.discard,
        site_key=_read_site_key(args.site_key),
        ready_checkins=args.ready_checkins,
        ready_interval=args.ready_interval,
        policy=_policy(args),
        script_timeout=args.script_timeout,
        io_timeout=args.io_timeout,
        timeout=args.timeout,
    )
    _log_to_stderr(prog, args.quiet)
    result = asyncio.run(simulate_node(opts, args.mac))
    if not result.ok:
        print(f"{prog}: error: {result.mac}: {result.error}", file=sys.stderr)
        return 1
    if not args.quiet:
        r = result
        print(f"{r.mac} {r.name} {r.vnfs} ready ({r.bytes} bytes, {r.seconds:.2f} s)")
    return 0


def _run_provisiond(args: argparse.Namespace) -> int:
    from perceus.stage1.nodeconf import NodeConf, read_node_conf
    from perceus.stage1.provisiond import ProvisiondOptions, run_provisiond, setup_logging

    masters = tuple(m for group in args.master for m in group)
    try:
        conf = read_node_conf(args.config)
    except OSError as exc:
        if not masters:
            raise ValueError(str(exc.strerror or exc)) from None
        conf = NodeConf()
    masters = masters or conf.masters
    if not masters:
        raise ValueError(f"no MASTERS in {args.config} and no --master")
    if args.once is not None and not args.once.replace("_", "a").replace("-", "a").isalnum():
        raise _Usage(f"--once {args.once!r}: not a state name")
    interval = args.interval if args.interval is not None else conf.interval
    if interval < 1:
        raise _Usage("--interval must be at least 1")
    setup_logging(args.foreground or bool(args.once))
    opts = ProvisiondOptions(
        conf=conf,
        masters=masters,
        interval=interval,
        once=args.once or "",
        foreground=args.foreground,
        pidfile=args.pidfile,
        site_key=_read_site_key(args.site_key),
        reboot_command=args.reboot_command,
        poweroff_command=args.poweroff_command,
        policy=_policy(args),
    )
    return run_provisiond(opts)


def _run_initramfs(args: argparse.Namespace) -> int:
    from perceus.stage1.initramfs import run_initramfs

    return run_initramfs(args.site_key, _policy(args))


def main(argv: list[str] | None = None) -> int:
    """Entry point of every name the program goes by; returns (and exits with) the status."""
    prog = os.path.basename(sys.argv[0]) if argv is None else "perceus-stage1"
    if prog in ("__main__.py", "-c", ""):
        prog = "perceus-stage1"
    shown = "provisiond" if prog == "provisiond" else "perceus-stage1"
    parser = build_parser(shown)
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
        mode = _mode(args, prog)
        if mode == "simulate":
            status = _run_simulate(args, shown)
        elif mode == "provisiond":
            status = _run_provisiond(args)
        else:
            status = _run_initramfs(args)
    except _Usage as exc:
        print(f"{shown}: error: {exc}", file=sys.stderr)
        status = 2
    except (ValueError, OSError) as exc:
        print(f"{shown}: error: {exc}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        status = 130
    if argv is None:
        sys.exit(status)
    return status
