"""When a login needs a second factor (TOTP, sso/totp.py): a policy over any login method.

The broker asks the policy after a method has accepted a login and before it opens a portal session
(broker/auth.py). Today's rule, kept as the default: a password login from outside the smart work
centers' networks needs a code when `[totp] required_outside_centers` is on; `[totp] methods` names the
login methods the rule applies to (certificate logins are exempt unless listed).
"""

from __future__ import annotations

import ipaddress

from sso.config import TotpSettings


def in_networks(client_ip: str, networks: list[str]) -> bool:
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(net, strict=False) for net in networks)


class SecondFactor:
    def __init__(self, settings: TotpSettings) -> None:
        self.settings = settings

    def inside_center(self, client_ip: str) -> bool:
        return in_networks(client_ip, self.settings.center_networks)

    def required(self, method: str, client_ip: str) -> bool:
        """Whether a login by `method` from `client_ip` must also give a TOTP code."""
        return (
            self.settings.required_outside_centers
            and method in self.settings.methods
            and not self.inside_center(client_ip)
        )

    def enrolment_allowed(self, client_ip: str) -> bool:
        # Enrolment only where the user's identity is vouched for in person: inside a center.
        return self.inside_center(client_ip)
