"""`vdi bench logon-storm`: the whole logon path of many users at a target arrival rate, through HAProxy
in front of two brokers and two gateways on PostgreSQL.

The bench starts what it measures (docs/ha.md): the lab's PostgreSQL and slapd in a temporary state
directory, an RFB stub that every stub desktop's display is, and `HaLab` (two `vdi broker` and two `vdi
gateway` processes behind HAProxy, TLS terminated at HAProxy). It adds `--users` directory accounts of its
own (uid storm00001…, group `storm`) to that slapd, waits for the pool's spares, and then starts logons
open-loop at `--rate` per second for `--duration` seconds; logon k is user k mod `--users`. One logon:

  portal   GET  /login                                   (the page, and the XSRF cookie)
  login    POST /api/v1/login                            (LDAP bind + group search on a broker)
  desktops GET  /api/v1/desktops                         (entitlements)
  connect  POST /api/v1/pools/<pool>/connect             (a prewarmed spare, or the user's own session)
  token    POST /api/v1/sessions/<id>/console-token
  console  WebSocket wss://…/ws?token=… to the RFB banner (through a gateway, which logs in to the desktop)

Each virtual user has its own connections (a browser's: one kept alive across its steps, one for the
WebSocket), on a lean HTTP/1.1 client (LeanBrowser) rather than aiohttp. `cpu_ms_per_logon` counts the
bench's own process (`rfb_stub_and_client`) without its children: the brokers, gateways and slapd it
starts are counted in their own groups. The JSON gives
logons/s achieved, p50/p99 per step, failures by reason and, with `--profile-s`, where one broker's CPU
goes (py-spy). Never a timed test: a benchmark.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from vdi.bench import read_frame, tree_cpu_s, websocket_upgrade

STEPS = ("portal", "login", "desktops", "connect", "token", "console")
PASSWORD = "storm-pass-1!"  # noqa: S105 - the bench's own throwaway accounts in its own slapd
GROUP = "storm"
POOL = "storm-pool"
# Every virtual user comes from 127.0.0.1, and a login in progress counts against its source address until
# it succeeds (broker/login_security.py): with the default 20 per address, 20 logons in flight from one
# address lock it. The bench measures throughput, so its one address gets a limit no storm reaches.
STORM_LOCKOUT = "[lockout]\nsource_max_failures = 100000\n"


class StepFailed(Exception):
    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"{step}: {reason}")
        self.step, self.reason = step, reason


@dataclass
class Results:
    started: int = 0
    succeeded: int = 0
    steps: dict[str, list[float]] = field(default_factory=lambda: {step: [] for step in STEPS})
    totals: list[float] = field(default_factory=list)
    failures: collections.Counter = field(default_factory=collections.Counter)
    # (seconds since the run started, ok) of every logon, for failover tests that look at a timeline
    timeline: list[tuple[float, bool]] = field(default_factory=list)
    t0: float = 0.0  # perf_counter at the start of the run


def client_tls(certificate: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certificate))
    return context


async def one_logon(
    http, front: str, username: str, password: str, pool: str, tls, through: str = "console"
) -> dict[str, float]:
    """Run the path once in `http` (an aiohttp ClientSession, or a LeanBrowser) up to and with the step
    `through`; step → seconds. StepFailed otherwise."""
    if isinstance(http, LeanBrowser):
        return await http.logon(username, password, pool, through)
    import aiohttp

    async def request(name: str, method: str, path: str, body: dict | None) -> dict:
        headers = {}
        if method == "POST":
            xsrf = next((c.value for c in http.cookie_jar if c.key == "_xsrf"), "")
            headers = {"X-XSRFToken": xsrf}
        try:
            async with http.request(method, front + path, json=body, headers=headers, ssl=tls) as reply:
                data = await reply.read()
                if reply.status != 200:
                    raise StepFailed(name, f"HTTP {reply.status}")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise StepFailed(name, type(exc).__name__) from None
        return json.loads(data) if data[:1] in (b"{", b"[") else {}

    async def console(url: str) -> bytes:
        try:
            async with http.ws_connect(url, origin=front, ssl=tls, autoping=False) as socket:
                return await socket.receive_bytes(timeout=30)
        except (aiohttp.ClientError, TimeoutError, OSError, TypeError) as exc:
            raise StepFailed("console", type(exc).__name__) from None

    return await walk(request, console, username, password, pool, through)


async def walk(request, console, username: str, password: str, pool: str, through: str) -> dict[str, float]:
    """The path itself, whatever the client: `request(step, method, path, body)` answers a step's JSON (or
    {}) and raises StepFailed; `console(url)` opens the console's WebSocket and answers its first message.
    Step → seconds."""
    times: dict[str, float] = {}

    async def step(name: str, method: str, path: str, body: dict | None = None) -> dict:
        started = time.perf_counter()
        answer = await request(name, method, path, body)
        times[name] = time.perf_counter() - started
        return answer

    await step("portal", "GET", "/login")
    await step("login", "POST", "/api/v1/login", {"username": username, "password": password})
    await step("desktops", "GET", "/api/v1/desktops")
    if through == "desktops":
        return times
    session = await step("connect", "POST", f"/api/v1/pools/{pool}/connect")
    grant = await step("token", "POST", f"/api/v1/sessions/{session['session_id']}/console-token")
    started = time.perf_counter()
    separator = "&" if "?" in grant["gateway_url"] else "?"  # it may carry the request id (?rid=…)
    banner = await console(f"{grant['gateway_url']}{separator}token={grant['token']}")
    if not banner.startswith(b"RFB 003."):
        raise StepFailed("console", "no RFB banner")
    times["console"] = time.perf_counter() - started
    return times


def _in_the_past(http_date: str) -> bool:
    try:
        return email.utils.parsedate_to_datetime(http_date.strip()).timestamp() < time.time()
    except (TypeError, ValueError):
        return False


class HttpClosed(Exception):
    """The server closed a kept connection before answering."""


class LeanBrowser:
    """One virtual user's browser for the storm: its own TLS connection to the front, kept alive across its
    steps, its own cookies, and a WebSocket of its own for the console, like a browser's.

    HTTP/1.1 on asyncio streams with only what the path needs (cookies by name, Content-Length or chunked
    bodies, the XSRF header), not aiohttp: the load generator shares the machine's two cores with the
    servers it measures, and aiohttp's per-request machinery (request and response objects, cookie jar
    filtering, timers) cost it more CPU per logon than the brokers spend (docs/ha.md). A browser's HTTP
    stack is native code; what the bench should weigh is the servers."""

    def __init__(
        self, front: str, tls: ssl.SSLContext | None, source: str | None = None, timeout_s: float = 60.0
    ) -> None:
        """`tls`: the context for an https:// front (None: plain http://, as a test's server speaks)."""
        parts = urlsplit(front)
        self.front, self.tls, self.source, self.timeout_s = front, tls, source, timeout_s
        self.default_port = 443 if tls is not None else 80
        self.host, self.port, self.netloc = parts.hostname, parts.port or self.default_port, parts.netloc
        self.cookies: dict[str, str] = {}
        self._stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def __aenter__(self) -> LeanBrowser:
        return self

    async def __aexit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        if self._stream is not None:
            self._stream[1].close()
            self._stream = None

    async def _connect(self, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        local = (self.source, 0) if self.source else None
        return await asyncio.open_connection(host, port, ssl=self.tls, local_addr=local, limit=2**20)

    def _cookie_header(self) -> str:
        return "; ".join(f"{name}={value}" for name, value in self.cookies.items())

    def _take_cookie(self, line: str) -> None:
        pair, *attributes = line.split(";")
        name, _, value = pair.strip().partition("=")
        for attribute in attributes:
            key, _, setting = attribute.strip().partition("=")
            key = key.lower()
            if (key == "max-age" and setting.strip().lstrip("-").isdigit() and int(setting) <= 0) or (
                key == "expires" and _in_the_past(setting)
            ):
                self.cookies.pop(name, None)  # cleared (Tornado's clear_cookie: an expiry in the past)
                return
        self.cookies[name] = value.strip('"')

    async def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        """(status, body) of one request on the kept connection (opened again if the server closed it)."""
        payload = b"" if body is None else json.dumps(body).encode()
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.netloc}"]
        if self.cookies:
            lines.append(f"Cookie: {self._cookie_header()}")
        if method == "POST":
            lines.append(f"X-XSRFToken: {self.cookies.get('_xsrf', '')}")
            lines.append("Content-Type: application/json")
        if payload or method == "POST":
            lines.append(f"Content-Length: {len(payload)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode()
        async with asyncio.timeout(self.timeout_s):
            for attempt in (1, 2):
                reused = self._stream is not None
                if self._stream is None:
                    self._stream = await self._connect(self.host, self.port)
                reader, writer = self._stream
                writer.write(head + payload)
                try:
                    return await self._response(reader)
                except HttpClosed:
                    self.close()
                    # A kept connection the front closed while idle: a browser sends again on a new one.
                    if not reused or attempt == 2:
                        raise
        raise AssertionError("unreachable")

    async def _response(self, reader: asyncio.StreamReader) -> tuple[int, bytes]:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise HttpClosed() from None
            raise
        status_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        length, chunked, close = None, False, False
        for line in header_lines:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "set-cookie":
                self._take_cookie(value.strip())
            elif name == "content-length":
                length = int(value)
            elif name == "transfer-encoding":
                chunked = "chunked" in value.lower()
            elif name == "connection":
                close = "close" in value.lower()
        if chunked:
            parts = []
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                parts.append(await reader.readexactly(size + 2))
            await reader.readuntil(b"\r\n")
            data = b"".join(part[:-2] for part in parts)
        elif length is not None:
            data = await reader.readexactly(length)
        else:
            data, close = await reader.read(), True
        if close:
            self.close()
        return status, data

    async def console_banner(self, url: str) -> bytes:
        """Open the console's WebSocket (its own connection, as a browser's) and read the first binary
        message: the desktop's RFB banner."""
        parts = urlsplit(url)
        async with asyncio.timeout(30):
            reader, writer = await self._connect(parts.hostname, parts.port or self.default_port)
            try:
                writer.write(websocket_upgrade(parts, self.front))
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 101"):
                    raise StepFailed("console", f"HTTP {head[9:12].decode(errors='replace')}")
                while True:
                    opcode, payload = await read_frame(reader)
                    if opcode == 0x8:
                        raise StepFailed("console", "closed")
                    if opcode == 0x2:
                        break
                # A close frame (masked, code 1000), then the connection: the browser leaves the page.
                writer.write(bytes([0x88, 0x82]) + b"\0\0\0\0" + (1000).to_bytes(2, "big"))
                return payload
            finally:
                writer.close()

    async def logon(self, username: str, password: str, pool: str, through: str = "console") -> dict:
        """One_logon's path through this browser; step → seconds."""

        async def request(name: str, method: str, path: str, body: dict | None) -> dict:
            try:
                status, data = await self.request(method, path, body)
            except (TimeoutError, OSError, HttpClosed, asyncio.IncompleteReadError, ValueError) as exc:
                raise StepFailed(name, type(exc).__name__) from None
            if status != 200:
                raise StepFailed(name, f"HTTP {status}")
            return json.loads(data) if data[:1] in (b"{", b"[") else {}

        async def console(url: str) -> bytes:
            try:
                return await self.console_banner(url)
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
                raise StepFailed("console", type(exc).__name__) from None

        return await walk(request, console, username, password, pool, through)


def source_address(index: int, sources: int) -> str | None:
    """Logon `index`'s client address among `sources` loopback addresses 127.1.x.y (0: the default one).

    HAProxy appends the address it sees to X-Forwarded-For, and the brokers trust HAProxy (127.0.0.1), so
    each virtual user counts as its own source for lockout and audit, like users at home; one address is a
    smart work center's terminals behind NAT."""
    if sources <= 0:
        return None
    number = index % sources
    return f"127.1.{number // 250}.{number % 250 + 1}"


def new_client(limit: int = 4, source: str | None = None):
    """A browser's HTTP client: its own cookie jar (IP-address hosts allowed) and a few kept connections,
    from the loopback address `source` if given."""
    import aiohttp

    return aiohttp.ClientSession(
        cookie_jar=aiohttp.CookieJar(unsafe=True),
        connector=aiohttp.TCPConnector(limit=limit, local_addr=(source, 0) if source else None),
        timeout=aiohttp.ClientTimeout(total=60),
    )


async def storm(
    front: str,
    users: list[str],
    password: str,
    pool: str,
    tls: ssl.SSLContext,
    rate: float,
    duration_s: float,
    max_in_flight: int = 1000,
    stop: threading.Event | None = None,
    through: str = "console",
    results: Results | None = None,
    sources: int = 0,
) -> Results:
    """Start logons open-loop at `rate`/s for `duration_s` (or until `stop`), and wait for them all.
    `results` (filled as logons end) lets another thread watch the run."""
    results = results if results is not None else Results()
    in_flight = asyncio.Semaphore(max_in_flight)
    t0 = results.t0 = time.perf_counter()

    async def run(index: int) -> None:
        async with in_flight, LeanBrowser(front, tls, source_address(index, sources)) as browser:
            started = time.perf_counter()
            try:
                user = users[index % len(users)]
                times = await browser.logon(user, password, pool, through)
            except StepFailed as exc:
                results.failures[f"{exc.step}: {exc.reason}"] += 1
                results.timeline.append((started - t0, False))
                return
            results.succeeded += 1
            results.totals.append(time.perf_counter() - started)
            results.timeline.append((started - t0, True))
            for name, seconds in times.items():
                results.steps[name].append(seconds)

    tasks = []
    total = int(rate * duration_s)
    for index in range(total):
        if stop is not None and stop.is_set():
            break
        delay = t0 + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        results.started += 1
        tasks.append(asyncio.create_task(run(index)))
    await asyncio.gather(*tasks)
    return results


# -- figures --------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def step_summary(values: list[float]) -> dict:
    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 1)

    return {
        "count": len(values),
        "p50_ms": ms(percentile(values, 0.5)),
        "p99_ms": ms(percentile(values, 0.99)),
    }


def report(results: Results, wall_s: float, args) -> dict:
    return {
        "benchmark": "logon-storm",
        "front": "HAProxy (TLS terminated) -> 2 brokers + 2 gateways, PostgreSQL, slapd",
        "target_rate_per_s": args.rate,
        "duration_s": args.duration,
        "users": args.users,
        "client_addresses": args.source_addresses or 1,
        "database_pool_size": args.db_pool_size,
        "logons_started": results.started,
        "logons_succeeded": results.succeeded,
        "logons_per_s": round(results.succeeded / wall_s, 1) if wall_s else None,
        "wall_s": round(wall_s, 1),
        "whole_logon": step_summary(results.totals),
        "steps": {name: step_summary(values) for name, values in results.steps.items()},
        "failures": dict(results.failures.most_common()),
        "cpu_count": os.cpu_count(),
    }


# -- the set-up the bench runs against -----------------------------------------------------------------


def add_storm_users(slapd, count: int) -> list[str]:
    """`count` accounts uid=storm00001… with PASSWORD and a group `storm` holding them all."""
    import ldap3

    from vdi.lab.slapd import ssha

    names = [f"storm{index:05d}" for index in range(1, count + 1)]
    people, groups = f"ou=people,{slapd.suffix}", f"ou=groups,{slapd.suffix}"
    server = ldap3.Server(slapd.url)
    with ldap3.Connection(server, slapd.root_dn, slapd.root_password(), auto_bind=True) as conn:
        for name in names:
            conn.add(
                f"uid={name},{people}",
                ["inetOrgPerson"],
                {"uid": name, "cn": name, "sn": "storm", "userPassword": ssha(PASSWORD)},
            )
            if conn.result["result"] not in (0, 68):  # 68: already exists
                raise RuntimeError(f"adding {name}: {conn.result['description']}")
        conn.add(
            f"cn={GROUP},{groups}",
            ["groupOfNames"],
            {"cn": GROUP, "member": [f"uid={n},{people}" for n in names]},
        )
        if conn.result["result"] not in (0, 68):
            raise RuntimeError(f"adding group {GROUP}: {conn.result['description']}")
    return names


class LoopThread:
    """The RFB stub's event loop, off the load generator's loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="rfb-stub", daemon=True)
        self.thread.start()

    def call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _pid_in(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


# The group that is the bench's own process: its threads only. The servers the bench starts (brokers,
# gateways, slapd) are its child processes, so its process tree would count them a second time.
OWN_PROCESS = "rfb_stub_and_client"


def own_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) of the process itself, without any child."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds so far of each named group of process trees (brokers, gateways, postgres …); of the
    bench's own process (OWN_PROCESS) without its children."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        children[int(fields[1])].append(int(stat.parent.name))
    return {
        name: sum(own_cpu_s(pid) if name == OWN_PROCESS else tree_cpu_s(pid, children) for pid in group)
        for name, group in pids.items()
    }


def cpu_per_logon(before: dict[str, float], after: dict[str, float], logons: int) -> dict[str, float]:
    """Milliseconds of CPU per succeeded logon, per group and in all: load disturbs this less than
    logons/s on a shared machine."""
    spent = {name: after[name] - before[name] for name in before}
    # The bench's own process (clients, RFB stub, py-spy) is the load, not the product.
    spent["all_servers"] = sum(v for name, v in spent.items() if name != OWN_PROCESS)
    return {name: round(1000 * seconds / max(logons, 1), 2) for name, seconds in spent.items()}


def profile_broker(pid: int, seconds: float, out: Path) -> subprocess.Popen:
    """py-spy sampling one broker while the storm runs (raw collapsed stacks in `out`): only the thread
    holding the GIL, so the shares are of the Python CPU time, not of threads waiting on sockets."""
    py_spy = Path(sys.executable).with_name("py-spy")
    return subprocess.Popen(
        [str(py_spy), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200",
         "--format", "raw", "--output", str(out), "--nonblocking", "--gil"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def summarise_profile(raw: Path, top: int = 15) -> dict:
    """Share of samples per leaf function and per top package in the stacks (inclusive)."""
    leaves: collections.Counter = collections.Counter()
    packages: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        leaves[frames[-1]] += count
        for package in {_package(frame) for frame in frames}:
            packages[package] += count
    if not total:
        return {"samples": 0}
    share = lambda n: round(100 * n / total, 1)  # noqa: E731
    return {
        "samples": total,
        "top_leaf_functions_pct": {name: share(n) for name, n in leaves.most_common(top)},
        "packages_inclusive_pct": {name: share(n) for name, n in packages.most_common(top)},
    }


def _package(frame: str) -> str:
    # py-spy frames look like "function (path/to/module.py:123)".
    path = frame.rpartition("(")[2].rstrip(")").rsplit(":", 1)[0]
    if "site-packages/" in path:
        return path.split("site-packages/")[1].split("/")[0]
    parts = Path(path).parts
    for ours in ("broker", "sso", "gateway", "hypervisor", "monitoring", "vdi"):
        if ours in parts:
            return f"{ours}/" + "/".join(parts[parts.index(ours) + 1 :][:1])
    return "python" if "python3" in path else path


def main(args) -> int:
    from vdi.lab.ha import HaLab, PoolSpec, free_port
    from vdi.lab.postgres import Postgres
    from vdi.lab.slapd import DEFAULT_SUFFIX, Slapd
    from vdi.lab.stub_desktops import RfbStub

    state = Path(tempfile.mkdtemp(prefix="vdi-bench-storm-"))
    state.chmod(0o755)  # the postgres account walks to its data directory
    postgres = Postgres(state / "postgres", free_port())
    slapd = Slapd(state / "slapd", free_port(), DEFAULT_SUFFIX)
    stub_loop = LoopThread()
    stub = RfbStub()
    lab = None
    try:
        postgres.start()
        slapd.start()
        users = add_storm_users(slapd, args.users)
        stub_loop.call(stub.start())
        pool = PoolSpec(POOL, [GROUP], spares=args.spares)
        lab = HaLab(
            state / "ha",
            postgres.url(),
            slapd.settings(),
            stub.port,
            [pool],
            log_level="WARNING",
            extra_toml=STORM_LOCKOUT,
            stub_hosts=args.hosts,
            db_pool_size=args.db_pool_size,
        )
        lab.start()
        tls = client_tls(lab.certificate)
        _wait_for_spares(lab, args.spares)
        processes = {
            "brokers": [m.process.pid for m in lab.of_kind("broker")],
            "gateways": [m.process.pid for m in lab.of_kind("gateway")],
            "postgres": [_pid_in(postgres.data_dir / "postmaster.pid")],
            "slapd": [_pid_in(slapd.pid_file)],
            "haproxy": [_pid_in(lab.haproxy.pid_file)],
            OWN_PROCESS: [os.getpid()],
        }
        processes = {name: [pid for pid in pids if pid] for name, pids in processes.items()}
        cpu_before = cpu_seconds(processes)
        profiler = None
        if args.profile_s:
            broker_pid = lab.of_kind("broker")[0].process.pid
            profiler = profile_broker(broker_pid, args.profile_s, state / "profile.raw")
        started = time.perf_counter()
        results = asyncio.run(
            storm(
                lab.front_url,
                users,
                PASSWORD,
                POOL,
                tls,
                args.rate,
                args.duration,
                args.max_in_flight,
                sources=args.source_addresses,
            )
        )
        wall = time.perf_counter() - started
        output = report(results, wall, args)
        output["cpu_ms_per_logon"] = cpu_per_logon(cpu_before, cpu_seconds(processes), results.succeeded)
        output["load_average"] = list(os.getloadavg())
        if profiler is not None:
            profiler.wait(timeout=args.profile_s + 60)
            output["profile_broker_b1"] = summarise_profile(state / "profile.raw")
        print(json.dumps(output, indent=2, ensure_ascii=False))
        return 0
    finally:
        if lab is not None:
            lab.stop()
        stub_loop.call(stub.close())
        stub_loop.close()
        slapd.stop()
        postgres.stop()
        if not args.keep:
            shutil.rmtree(state, ignore_errors=True)


def _wait_for_spares(lab, spares: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while len(lab.stub_desktops()) < spares:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the pool never had {spares} spares")
        time.sleep(0.2)
