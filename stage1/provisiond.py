"""provisiond: the runtime OS's check-ins (``ready`` every N seconds, one-shot halt/reboot).

It reads /etc/perceus/node.conf (MASTERS, PROVISIOND_INTERVAL, NODEID) that perceusd put in
the overlay, runs the ``ready`` nodescript with DESTDIR="" (the live root) and acts on the
word the script leaves in PERCEUS_REQUEST after the session: reprovision or reboot runs the
reboot command, halt the poweroff command.
"""

import asyncio
import logging
import logging.handlers
import os
import random
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from perceus.common.daemonize import Pidfile, daemonize
from perceus.common.jitter import jittered
from perceus.stage1.cmdline import Master
from perceus.stage1.facts import Facts, gather_facts
from perceus.stage1.nodeconf import NodeConf
from perceus.stage1.retry import NoMaster, RetryPolicy, Target, check_in_until_done
from perceus.stage1.scriptrun import ScriptEnv
from perceus.stage1.session import CheckIn

__all__ = ["ProvisiondOptions", "run_provisiond"]

log = logging.getLogger("perceus.stage1")

INTERVAL_JITTER = 0.1  # +- this fraction of the interval, so a cluster's check-ins spread out


@dataclass(frozen=True)
class ProvisiondOptions:
    conf: NodeConf
    masters: tuple[Master, ...]
    interval: int
    once: str = ""  # a one-shot state (halt, reboot, ready...): check in once and exit
    foreground: bool = False
    pidfile: Path | None = None
    site_key: bytes | None = None
    reboot_command: str = "reboot"
    poweroff_command: str = "poweroff"
    policy: RetryPolicy = RetryPolicy()


def setup_logging(foreground: bool) -> None:
    """stderr always (foreground), and syslog when /dev/log exists."""
    root = logging.getLogger("perceus.stage1")
    root.setLevel(logging.INFO)
    if foreground or sys.stderr.isatty():
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("provisiond: %(message)s"))
        root.addHandler(h)
    if os.path.exists("/dev/log"):
        try:
            s = logging.handlers.SysLogHandler(address="/dev/log")
            s.setFormatter(logging.Formatter("provisiond[%(process)d]: %(message)s"))
            root.addHandler(s)
        except OSError:
            pass


def _act(request: str, opts: ProvisiondOptions) -> None:
    if not request:
        return
    command = opts.poweroff_command if request == "halt" else opts.reboot_command
    log.info("the nodescript asks to %s: running %s", request, command)
    try:
        subprocess.run(shlex.split(command), check=False, stdin=subprocess.DEVNULL)
    except OSError as exc:
        log.error("cannot run %s: %s", command, exc)


def _facts(nodeid: str | None) -> Facts:
    """This machine's facts; the NodeID from node.conf wins (it is what perceusd knows us by)."""
    try:
        facts = gather_facts()
    except LookupError:
        if not nodeid:
            raise
        return Facts(nodeid=nodeid)
    return replace(facts, nodeid=nodeid) if nodeid else facts


async def _check_in(state: str, opts: ProvisiondOptions, nodeid: str | None) -> str:
    facts = _facts(nodeid)
    req = CheckIn(state=state, facts=facts, env=ScriptEnv("provisiond", ""), site_key=opts.site_key)
    outcome = await check_in_until_done([Target(m) for m in opts.masters], req, opts.policy)
    name = outcome.assign.name if outcome.assign else "?"
    log.info("checked in %s as %s with %s", state, name, outcome.master)
    return outcome.request


def run_provisiond(opts: ProvisiondOptions) -> int:
    """--once STATE: one check-in, exit 0/1. Otherwise the loop, which only a signal ends."""
    nodeid = opts.conf.nodeid or None
    if opts.once:
        try:
            request = asyncio.run(_check_in(opts.once, opts, nodeid))
        except NoMaster as exc:
            log.error("%s", exc)
            return 1
        _act(request, opts)
        return 0
    if not opts.foreground:
        daemonize()
    pidfile = Pidfile(opts.pidfile, "provisiond") if opts.pidfile is not None else None
    if pidfile is not None:
        pidfile.write()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        asyncio.run(_loop(opts, nodeid))
    finally:
        if pidfile is not None:
            pidfile.remove()
    return 0


async def _loop(opts: ProvisiondOptions, nodeid: str | None) -> None:
    rng = random.Random()
    while True:
        try:
            request = await _check_in("ready", opts, nodeid)
            _act(request, opts)
        except NoMaster as exc:
            log.error("%s; trying again in %d s", exc, opts.interval)
        except (OSError, LookupError) as exc:
            log.error("check-in failed: %s", exc)
        await asyncio.sleep(jittered(opts.interval, INTERVAL_JITTER, rng))
