"""Login timing: `vdi bench login-timing [--runs N]`, JSON out.

Does the time a refused password login takes tell whether the user name exists? Against a lab slapd the
bench starts itself (the demo directory), it times refusals of a known user with a wrong password and of
unknown names, interleaved, for three set-ups: the decoy bind on a DN that does not exist and no floor (the
code before security finding 11), the decoy bind on a real entry (`ldap.decoy_dn`), and that plus the
refusal floor (`ldap.refusal_floor_s`, the default). Medians and p90 in milliseconds, and their difference.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import statistics
import tempfile
import time
from pathlib import Path

from sso.base import AuthError
from sso.config import LdapSettings
from sso.ldap import LdapAuthenticator
from vdi.lab.slapd import DEFAULT_SUFFIX, Slapd

KNOWN_USER = "kimmj"
WARM_UP = 20


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def _refusal_ms(authenticator: LdapAuthenticator, username: str) -> float:
    started = time.perf_counter()
    try:
        await authenticator.authenticate(username, "not-the-password")
    except AuthError:
        return (time.perf_counter() - started) * 1000
    raise RuntimeError(f"{username} logged in with a wrong password")


def _summary(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered), 3),
        "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))], 3),
    }


async def _measure(settings: LdapSettings, runs: int) -> dict:
    authenticator = LdapAuthenticator(settings)
    try:
        known: list[float] = []
        unknown: list[float] = []
        for index in range(WARM_UP + runs):
            # Interleaved, so drift in the machine's load falls on both alike.
            pair = (
                await _refusal_ms(authenticator, KNOWN_USER),
                await _refusal_ms(authenticator, f"nobody{index}"),
            )
            if index >= WARM_UP:
                known.append(pair[0])
                unknown.append(pair[1])
    finally:
        authenticator.close()
    result = {"known_user_wrong_password": _summary(known), "unknown_user": _summary(unknown)}
    result["p50_difference_ms"] = round(
        result["known_user_wrong_password"]["p50_ms"] - result["unknown_user"]["p50_ms"], 3
    )
    return result


def run(runs: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="vdi-bench-ldap-") as scratch:
        slapd = Slapd(Path(scratch), _free_port(), DEFAULT_SUFFIX)
        slapd.start()
        try:
            real = slapd.settings()
            setups = {
                "missing_decoy_no_floor": real.model_copy(update={"decoy_dn": None, "refusal_floor_s": 0.0}),
                "decoy_entry_no_floor": real.model_copy(update={"refusal_floor_s": 0.0}),
                "decoy_entry_and_floor": real,
            }
            results = {name: asyncio.run(_measure(settings, runs)) for name, settings in setups.items()}
        finally:
            slapd.stop()
    return {"benchmark": "login-timing", "runs": runs, "refusal_floor_s": real.refusal_floor_s, **results}


def main(args) -> int:
    logging.getLogger("sso.ldap").setLevel(logging.WARNING)
    print(json.dumps(run(args.runs), indent=2))
    return 0
