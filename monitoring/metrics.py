"""Every Prometheus metric of smartwork-vdi, declared in one place.

Names follow <noun>_<verb>_<unit>. Label values are Enums so that each series exists at zero
from the start and no free-form (possibly secret) text becomes a label.
"""

from __future__ import annotations

from enum import Enum

from prometheus_client import Counter, Gauge, Histogram


class LoginMethod(Enum):
    PASSWORD = "password"
    CERTIFICATE = "certificate"


class LoginResult(Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    ERROR = "error"


class ConnectResult(Enum):
    SUCCESS = "success"
    FORBIDDEN = "forbidden"
    NO_CAPACITY = "no_capacity"
    HYPERVISOR_ERROR = "hypervisor_error"


class TunnelRefusal(Enum):
    TOKEN = "token"
    ORIGIN = "origin"
    UPSTREAM = "upstream"


class Direction(Enum):
    CLIENT_TO_DESKTOP = "client_to_desktop"
    DESKTOP_TO_CLIENT = "desktop_to_client"


LOGINS = Counter("vdi_logins_total", "Portal logins by method and result", ["method", "result"])
CONNECT_DURATION = Histogram(
    "vdi_connect_duration_seconds",
    "Time from a connect request to a console being ready, by result",
    ["result"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60),
)
SESSIONS_ACTIVE = Gauge("vdi_sessions_active", "Desktop sessions not yet logged off")
DESKTOPS_STARTED = Counter("vdi_desktops_started_total", "Desktops started on a hypervisor host")
DESKTOP_START_FAILURES = Counter(
    "vdi_desktop_start_failures_total", "Desktop starts that failed and were rolled back"
)
CONSOLE_TOKENS_ISSUED = Counter("vdi_console_tokens_issued_total", "Console tokens handed to clients")

TUNNELS_OPEN = Gauge("vdi_gateway_tunnels_open", "Console tunnels currently relaying")
TUNNELS_REFUSED = Counter(
    "vdi_gateway_tunnels_refused_total", "Console tunnels refused, by reason", ["reason"]
)
BYTES_RELAYED = Counter("vdi_gateway_bytes_relayed_total", "Bytes relayed through the gateway", ["direction"])


def _zero_series() -> None:
    for method in LoginMethod:
        for result in LoginResult:
            LOGINS.labels(method=method.value, result=result.value)
    for connect in ConnectResult:
        CONNECT_DURATION.labels(result=connect.value)
    for refusal in TunnelRefusal:
        TUNNELS_REFUSED.labels(reason=refusal.value)
    for direction in Direction:
        BYTES_RELAYED.labels(direction=direction.value)


_zero_series()
