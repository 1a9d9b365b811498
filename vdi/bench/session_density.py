"""Session density: `vdi bench session-density [--host sh1] [--max-sessions N] [--memory-budget-mib M]`, JSON out.

How many desktop sessions one session host holds, and what an idle one costs. On a lab session host (brought
up if it is not, and taken down again then), the bench starts sessions one after another through the
session-host provider, each a real Xvnc with a window manager and a program as a demo user's own account,
until `--max-sessions` or until the sessions together use `--memory-budget-mib`. Each start is timed until the
session is ready (its display answers RFB): the SBC start time, without the broker and the gateway. Then all
sit idle for `--idle-s`; per session, the memory its cgroup holds and the CPU it used while idle. Every
session is destroyed at the end.

Not a timed test: the figures are for the issue's notes and docs/session-hosts.md, not asserted.
"""

from __future__ import annotations

import json
import secrets
import statistics
import time
from itertools import cycle

from hypervisor.base import DesktopSpec
from hypervisor.config import HostSettings
from hypervisor.session_host import SessionHostProvider
from vdi.config import LabSettings
from vdi.lab.session_hosts import LabSessionHosts
from vdi.lab.slapd import DEMO_USERS

READY_TIMEOUT_S = 20.0
POLL_S = 0.05
TARGET_IDLE_MIB = 150  # issue 12: at most this much per idle desktop session


def _spec(user: str, command: list[str], window_manager: list[str]) -> DesktopSpec:
    return DesktopSpec(
        domain_name=f"vdi-bench-{user}-{secrets.token_hex(3)}",
        user=user,
        vnc_password=secrets.token_urlsafe(6)[:8],
        command=tuple(command),
        window_manager=tuple(window_manager),
    )


def _start(provider: SessionHostProvider, spec: DesktopSpec) -> float:
    started = time.monotonic()
    provider.create_desktop(spec)
    deadline = started + READY_TIMEOUT_S
    while not provider.readiness(spec.domain_name).ready:
        if time.monotonic() > deadline:
            raise RuntimeError(f"session {spec.domain_name} not ready within {READY_TIMEOUT_S:.0f} s")
        time.sleep(POLL_S)
    return time.monotonic() - started


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def _fill(provider: SessionHostProvider, args) -> tuple[list[str], list[float]]:
    """Start sessions until the count or the memory budget is reached; their names and start times."""
    names: list[str] = []
    starts: list[float] = []
    users = cycle(user.uid for user in DEMO_USERS)
    used = 0
    while len(names) < args.max_sessions and used < args.memory_budget_mib << 20:
        spec = _spec(next(users), args.command, args.window_manager)
        names.append(spec.domain_name)
        starts.append(_start(provider, spec))
        used = sum(provider.usage(name).memory_bytes for name in names)
    return names, starts


def _idle_figures(provider: SessionHostProvider, names: list[str], idle_s: float) -> tuple[list, list]:
    before = {name: provider.usage(name) for name in names}
    time.sleep(idle_s)  # the measurement itself: what idle sessions cost over this window
    after = {name: provider.usage(name) for name in names}
    memory = [after[name].memory_bytes / (1 << 20) for name in names]
    cpu = [
        (after[name].cpu_usec - before[name].cpu_usec) / (idle_s * 1e6) * 100
        for name in names
        if after[name].cpu_usec is not None and before[name].cpu_usec is not None
    ]
    return memory, cpu


def _report(args, starts: list[float], memory: list[float], cpu: list[float]) -> dict:
    return {
        "host": args.host,
        "sessions": len(starts),
        "session": {"window_manager": args.window_manager, "command": args.command},
        "memory_budget_mib": args.memory_budget_mib,
        "start_to_ready_s": {
            "p50": round(statistics.median(starts), 3),
            "p99": round(_percentile(starts, 0.99), 3),
            "max": round(max(starts), 3),
        },
        "idle_memory_mib_per_session": {
            "mean": round(statistics.fmean(memory), 1),
            "p50": round(statistics.median(memory), 1),
            "max": round(max(memory), 1),
            "target": TARGET_IDLE_MIB,
        },
        "idle_cpu_percent_per_session": (
            {"mean": round(statistics.fmean(cpu), 3), "max": round(max(cpu), 3), "window_s": args.idle_s}
            if cpu
            else None
        ),
    }


def main(config, args) -> int:
    # Without a configuration file, the lab's default state directory (where the tests' hosts live too).
    hosts = LabSessionHosts.for_lab((config.lab if config is not None else LabSettings()).state_dir)
    was_up = hosts.healthy(args.host)
    hosts.up()
    provider = SessionHostProvider(
        HostSettings(name=args.host, provider="session-host", uri=hosts.uri(args.host))
    )
    names: list[str] = []
    try:
        names, starts = _fill(provider, args)
        memory, cpu = _idle_figures(provider, names, args.idle_s)
    finally:
        for name in names:
            provider.destroy_desktop(name)
        provider.close()
        if not was_up:
            hosts.down()
    print(json.dumps(_report(args, starts, memory, cpu), indent=2))
    return 0
