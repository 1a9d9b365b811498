"""`vdi bench …`: benchmarks that print JSON (vdi/bench/). Never run as timed tests."""

from __future__ import annotations

import argparse
import importlib


def run_benchmark(module: str, *, with_config: bool = False):
    """The command of a benchmark: `vdi.bench.<module>.main`, imported only when that benchmark runs; those
    `with_config` get the configuration (None without a file) as well as the arguments."""

    def run(config, args: argparse.Namespace) -> int:
        main = importlib.import_module(f"vdi.bench.{module}").main
        return main(config, args) if with_config else main(args)

    return run


def geometry(text: str) -> tuple[int, int]:
    width, _, height = text.partition("x")
    return int(width), int(height)


def add_commands(sub) -> None:
    bench = sub.add_parser("bench", help="benchmarks (JSON out)", description="benchmarks (JSON out)")
    kinds = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCHMARK")

    def add(name: str, text: str, module: str, needs_config="optional", with_config=False):
        parser = kinds.add_parser(name, help=text, description=text)
        parser.set_defaults(fn=run_benchmark(module, with_config=with_config), needs_config=needs_config)
        return parser

    text = "placement at scale: many hosts, concurrent requests, real engine, claims and SQLite"
    placement = add("placement", text, "placement")
    placement.add_argument("--hosts", type=int, default=1000, help="hosts in the inventory (default 1000)")
    placement.add_argument("--concurrency", type=int, default=50, help="concurrent requests (default 50)")
    placement.add_argument("--requests", type=int, default=5000, help="placements per policy (default 5000)")
    placement.add_argument(
        "--policy", choices=["spread", "pack", "both"], default="both", help="placement policy (default both)"
    )
    placement.add_argument("--json", action="store_true", help="print only the JSON result")
    placement.add_argument("--database", help="SQLite file to use (default: a temporary one per policy)")
    placement.add_argument("--seed", type=int, default=1, help="seed of the host sizes and picks")
    placement.add_argument(
        "--postgresql",
        action="store_true",
        help="on the lab's PostgreSQL (started for the run) instead of SQLite",
    )
    placement.add_argument(
        "--brokers", type=int, default=1, help="broker processes placing at once, each with its own worker"
    )
    placement.add_argument(
        "--best-of",
        type=int,
        help="placement.best_of: pick among this many best hosts (default: the setting's)",
    )
    text = "console tunnel speed: raw TCP, the gateway and stock websockify against one fake desktop"
    tunnel = add("tunnel", text, "tunnel")
    tunnel.add_argument("--mb", type=int, default=256, help="MiB each way per path (default 256)")
    tunnel.add_argument("--round-trips", type=int, default=2000, help="6-byte round trips (default 2000)")
    tunnel.add_argument("--tunnels", type=int, default=2000, help="new tunnels per path (default 2000)")
    tunnel.add_argument("--concurrency", type=int, default=50, help="tunnels opened at once (default 50)")
    tunnel.add_argument(
        "--serial-tunnels",
        type=int,
        default=200,
        help="new tunnels opened one at a time, for the latency of one alone (default 200)",
    )
    tunnel.add_argument("--idle", type=int, default=1000, help="idle tunnels held open (default 1000)")
    tunnel.add_argument(
        "--websockify-idle", type=int, default=100, help="idle tunnels for websockify (a process each)"
    )
    tunnel.add_argument(
        "--only", action="append", choices=["gateway", "websockify", "haproxy-tcp"], help="paths besides raw"
    )
    text = "console recording: storage per hour of a real Xvnc desktop, and what recording costs the relay"
    recording = add("recording", text, "recording")
    recording.add_argument(
        "--seconds", type=float, default=60.0, help="time watched and recorded (default 60)"
    )
    recording.add_argument(
        "--scenario",
        choices=["idle", "terminal", "scroll"],
        default="terminal",
        help="what the desktop shows: nothing moving, top redrawing each second, or text scrolling",
    )
    recording.add_argument(
        "--geometry", type=geometry, default=(1280, 800), help="screen size WxH (default 1280x800)"
    )
    recording.add_argument(
        "--level", type=int, choices=range(1, 10), default=3, help="zlib level of the recording (default 3)"
    )
    recording.add_argument(
        "--mb", type=int, default=256, help="MiB streamed with recording off and on (default 256; 0 skips)"
    )
    text = "timing of refused password logins, known user against unknown, on a lab slapd it starts"
    timing = add("login-timing", text, "login_timing")
    timing.add_argument(
        "--runs", type=int, default=200, help="refusals of each kind per set-up (default 200)"
    )
    text = "time from connect to the first framebuffer update through the gateway, against a running broker"
    ttd = add("time-to-desktop", text, "time_to_desktop", needs_config="full", with_config=True)
    ttd.add_argument("--runs", type=int, default=20, help="connects per pool (default 20)")
    ttd.add_argument("--user", default="kimmj", help="user to sign in as (default: demo user kimmj)")
    ttd.add_argument("--password", default="demo1234!", help="that user's password (default: the demo's)")
    ttd.add_argument("--prewarmed-pool", default="mois-shared", help="floating pool with spares ('' to skip)")
    ttd.add_argument("--cold-pool", default="mois-office", help="floating pool without spares ('' to skip)")
    ttd.add_argument(
        "--pool",
        default="",
        help="a session or app pool (SBC): each connect starts a session, its screen is the panel drawn",
    )
    ttd.add_argument(
        "--virt-note",
        default="",
        help="recorded in the JSON as virt (default: what the broker's desktops booted with)",
    )
    ttd.add_argument(
        "--screen-timeout",
        type=float,
        default=60.0,
        help="seconds to wait after the first frame for the desktop's own screen (default 60)",
    )
    ttd.add_argument(
        "--no-desktop-screen",
        action="store_true",
        help="stop at the first frame (for images other than the demo's, whose screen this cannot recognise)",
    )
    text = (
        "sessions on one lab session host until a memory budget: start time, idle memory and CPU per session"
    )
    density = add("session-density", text, "session_density", with_config=True)
    density.add_argument("--host", default="sh1", help="lab session host (default sh1)")
    density.add_argument("--max-sessions", type=int, default=20, help="most sessions to start (default 20)")
    density.add_argument(
        "--memory-budget-mib",
        type=int,
        default=4096,
        help="stop once the sessions use this much (default 4096)",
    )
    density.add_argument("--idle-s", type=float, default=10.0, help="idle window measured (default 10)")
    density.add_argument(
        "--window-manager", nargs="*", default=["openbox"], help="window manager argv (default openbox)"
    )
    density.add_argument(
        "--command", nargs="+", default=["xterm"], help="session program argv (default xterm)"
    )
    text = "whole logon path of many users at a target rate through HAProxy, two brokers and gateways, PostgreSQL"
    logon = add("logon-storm", text, "logon_storm")
    logon.add_argument("--rate", type=float, default=300.0, help="logons started per second (default 300)")
    logon.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals (default 60)")
    logon.add_argument(
        "--users",
        type=int,
        default=2000,
        help="directory accounts made; logon k is user k mod this (default 2000)",
    )
    logon.add_argument("--spares", type=int, default=20, help="prewarmed desktops of the pool (default 20)")
    logon.add_argument(
        "--source-addresses",
        type=int,
        default=1000,
        help="loopback client addresses the users come from (default 1000; 0: all from 127.0.0.1, a center "
        "behind NAT)",
    )
    logon.add_argument(
        "--db-pool-size",
        type=int,
        default=5,
        help="[database] pool_size of each broker and gateway (default 5)",
    )
    logon.add_argument("--hosts", type=int, default=8, help="stub desktop hosts (default 8)")
    logon.add_argument("--max-in-flight", type=int, default=1000, help="most logons under way at once")
    logon.add_argument(
        "--profile-s", type=float, default=0, help="sample broker b1 with py-spy this many seconds (0: no)"
    )
    logon.add_argument("--keep", action="store_true", help="keep the state directory (logs) afterwards")
