"""The route to a desktop's display, decided once, when its console token is issued.

The gateway connects where the token says; it never looks the host up again (security review finding 3,
the way Nova's console tokens carry their connection info). Issuing refuses a route the gateway could
not take safely: a direct route to a remote host's loopback would dial the gateway's own loopback.
"""

from __future__ import annotations

from broker import errors
from broker.db.models import Host
from hypervisor.config import is_local_uri, is_loopback, resolve_console_route


class ConsoleRouteUnusable(errors.ServiceUnavailable):
    reason = "console_route_unusable"
    message = "The desktop's display cannot be reached from the console gateway."


def console_route(host: Host | None, display_host: str | None) -> tuple[str, str | None]:
    """("direct", None) or ("ssh", "user@host:port") for a display at `display_host` on `host`."""
    if host is None:
        raise ConsoleRouteUnusable("The desktop is on no host the broker knows.")
    try:
        access, address = resolve_console_route(host.uri, host.console_access, host.ssh_address)
    except ValueError:
        raise _unusable(host, "it is reached over ssh but has no SSH address") from None
    if access == "ssh":
        return "ssh", address
    if is_loopback(display_host) and not is_local_uri(host.uri):
        raise _unusable(host, f"its display is on its loopback ({display_host}) and the route is direct")
    return "direct", None


def _unusable(host: Host, why: str) -> ConsoleRouteUnusable:
    return ConsoleRouteUnusable(
        f"The display of a desktop on host {host.name} cannot be reached: {why}.", host=host.name
    )
