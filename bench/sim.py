"""perceus-sim: boot N simulated nodes at once against a master and summarize how it went.

Every node runs the whole init sequence (check-in, nodescript, image download verified chunk
by chunk, overlay, kernel) and its ready check-in(s), all in one asyncio process (or a few:
``--workers``). Exit status 0 only if every node succeeded.

In-process use (bench suites)::

    from perceus.bench.sim import run_simulation
    summary = run_simulation(["127.0.0.1:987"], nodes=128, discard=True)
    summary["ok"], summary["mb_per_s"], summary["checkin_p99_ms"]
"""

import argparse
import asyncio
import json
import logging
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

from perceus.common.stats import percentile
from perceus.native.nodeset import fold
from perceus.stage1.cmdline import parse_masters
from perceus.stage1.protocol import check_site_key
from perceus.stage1.retry import RetryPolicy
from perceus.stage1.simulate import NodeResult, SimOptions, simulate_nodes

__all__ = ["fold_names", "main", "run_simulation", "summarize"]

PROG = "perceus-sim"
MAX_FAILURES_SHOWN = 5


def fold_names(names: list[str]) -> str:
    """``n0000 n0001 n0003`` -> ``n[0000-0001,0003]``, as ``perceus node`` folds them."""
    return fold(names) if names else ""


def summarize(results: list[NodeResult], wall: float) -> dict:
    """The summary as a JSON-able dict (the keys ``--json`` prints)."""
    failed = [r for r in results if not r.ok]
    latencies = [x for r in results for x in r.checkins]
    total = sum(r.bytes for r in results)
    return {
        "ok": len(results) - len(failed),
        "failed": len(failed),
        "failures": [f"{r.mac}: {r.error}" for r in failed[:MAX_FAILURES_SHOWN]],
        "names": fold_names([r.name for r in results if r.ok and r.name]),
        "wall_s": round(wall, 3),
        "bytes": total,
        "mb_per_s": round(total / wall / 1e6, 1) if wall > 0 else 0.0,
        "checkin_p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "checkin_p99_ms": round(percentile(latencies, 99) * 1000, 2),
        "checkins": len(latencies),
    }


def _worker(opts: SimOptions, count: int) -> list[NodeResult]:
    logging.getLogger("perceus.stage1").setLevel(logging.CRITICAL)
    return asyncio.run(simulate_nodes(opts, count))


def run_nodes(opts: SimOptions, nodes: int, workers: int = 1) -> tuple[list[NodeResult], float]:
    """Run the nodes (in ``workers`` processes when > 1); returns results and wall seconds."""
    started = time.monotonic()
    if workers <= 1:
        results = asyncio.run(simulate_nodes(opts, nodes))
    else:
        shares = [nodes // workers + (1 if i < nodes % workers else 0) for i in range(workers)]
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_worker, opts, share) for share in shares if share]
            results = [r for f in futures for r in f.result()]
    return results, time.monotonic() - started


def run_simulation(
    masters: list[str],
    nodes: int,
    *,
    workers: int = 1,
    simdir: Path | None = None,
    discard: bool = True,
    site_key: bytes | None = None,
    ready_checkins: int = 1,
    timeout: float | None = None,
    policy: RetryPolicy | None = None,
) -> dict:
    """Boot ``nodes`` simulated nodes against ``masters`` (``HOST:PORT`` strings); returns the summary."""
    opts = SimOptions(
        masters=tuple(m for text in masters for m in parse_masters(text)),
        simdir=simdir,
        discard=discard,
        site_key=site_key,
        ready_checkins=ready_checkins,
        timeout=timeout,
        policy=policy or RetryPolicy(),
    )
    results, wall = run_nodes(opts, nodes, workers)
    return summarize(results, wall)


def _text(summary: dict, nodes: int) -> str:
    lines = [f"nodes: {nodes}, ok {summary['ok']}, failed {summary['failed']}"]
    for failure in summary["failures"]:
        lines.append(f"  failed: {failure}")
    lines.append(f"names: {summary['names'] or '-'}")
    lines.append(f"wall: {summary['wall_s']:.2f} s")
    lines.append(f"bytes: {summary['bytes']} ({summary['mb_per_s']} MB/s aggregate)")
    lines.append(
        f"check-in latency: p50 {summary['checkin_p50_ms']} ms, p99 {summary['checkin_p99_ms']} ms"
        f" ({summary['checkins']} check-ins)"
    )
    return "\n".join(lines)


class _Usage(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise _Usage(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Boot N simulated nodes against a Perceus master.")
    p.add_argument("--master", required=True, action="append", metavar="HOST:PORT")
    p.add_argument("--nodes", type=int, required=True, metavar="N")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--dir", type=Path, metavar="DIR", help="keep each node's files under DIR/<MAC>/")
    p.add_argument("--discard", action="store_true", help="verify downloads but keep no bytes")
    p.add_argument("--site-key", type=Path, metavar="FILE")
    p.add_argument("--ready-checkins", type=int, default=1, metavar="K")
    p.add_argument("--timeout", type=float, metavar="S", help="bound on each node's whole run")
    p.add_argument("--workers", type=int, default=1, metavar="W", help="processes sharing the nodes")
    p.add_argument("--rounds", type=int, default=5, help="failed rounds before a node gives up")
    p.add_argument("--round-backoff", type=float, default=2.0, metavar="S")
    p.add_argument("-v", "--verbose", action="store_true", help="log every node's warnings")
    return p


def main(argv: list[str] | None = None) -> int:
    """The ``perceus-sim`` command."""
    try:
        args = _parser().parse_args(argv)
        if args.nodes < 1 or args.workers < 1 or args.ready_checkins < 0 or args.rounds < 1:
            raise _Usage("--nodes, --workers and --rounds must be at least 1, --ready-checkins at least 0")
        if args.timeout is not None and args.timeout <= 0:
            raise _Usage("--timeout must be positive")
        try:
            masters = tuple(m for text in args.master for m in parse_masters(text))
        except ValueError as exc:
            raise _Usage(f"--master: {exc}") from None
        site_key = None
        if args.site_key is not None:
            site_key = check_site_key(args.site_key.read_bytes())
        if args.dir is not None:
            args.dir.mkdir(parents=True, exist_ok=True)
    except _Usage as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return _exit(2, argv)
    except (OSError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return _exit(1, argv)
    logger = logging.getLogger("perceus.stage1")
    if args.verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
    else:
        logger.setLevel(logging.CRITICAL)
    logger.propagate = False
    opts = SimOptions(
        masters=masters,
        simdir=args.dir,
        discard=args.discard,
        site_key=site_key,
        ready_checkins=args.ready_checkins,
        timeout=args.timeout,
        policy=replace(RetryPolicy(), rounds=args.rounds, backoff=args.round_backoff),
    )
    try:
        results, wall = run_nodes(opts, args.nodes, args.workers)
    except KeyboardInterrupt:
        return _exit(130, argv)
    summary = summarize(results, wall)
    print(json.dumps(summary) if args.json else _text(summary, args.nodes))
    return _exit(0 if summary["failed"] == 0 else 1, argv)


def _exit(status: int, argv: list[str] | None) -> int:
    if argv is None:
        sys.exit(status)
    return status


if __name__ == "__main__":
    main()
