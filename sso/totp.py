"""TOTP second factor (RFC 6238): secrets, their encryption at rest, and code verification.

Verification accepts the current time step and one step either side (clock drift of a phone), and
refuses any step not later than the last one used: a code seen over a shoulder or in a proxy log
cannot be replayed, not even within its own 30 s window (RFC 6238 section 5.2).
"""

from __future__ import annotations

import base64
import datetime as dt
import hmac
import os

import pyotp
import segno
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

STEP_S = 30
DIGITS = 6
WINDOW = 1
_NONCE_BYTES = 12
_KEY_INFO = b"smartwork-vdi totp secrets v1"


class TotpError(Exception):
    """A code was refused. `result` is a metric label value; `reason` is for logs and audit (no code)."""

    def __init__(self, result: str, reason: str) -> None:
        super().__init__(reason)
        self.result = result
        self.reason = reason


class SecretBox:
    """AES-256-GCM over TOTP secrets, with a key derived (HKDF-SHA256) from a configured secret.

    The username is the associated data, so a ciphertext copied onto another user's row fails to open.
    """

    def __init__(self, key_material: str) -> None:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KEY_INFO)
        self._aead = AESGCM(hkdf.derive(key_material.encode("utf-8")))

    def __repr__(self) -> str:
        return "SecretBox(***)"

    def seal(self, username: str, secret: str) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, secret.encode("ascii"), username.encode("utf-8"))
        return base64.b64encode(nonce + sealed).decode("ascii")

    def open(self, username: str, sealed: str) -> str:
        raw = base64.b64decode(sealed)
        try:
            plain = self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], username.encode("utf-8"))
        except InvalidTag:
            raise TotpError("invalid", "stored TOTP secret does not decrypt (key changed?)") from None
        return plain.decode("ascii")


def new_secret() -> str:
    """160 random bits in base32, the size RFC 4226 section 4 recommends."""
    return pyotp.random_base32(32)


def provisioning_uri(secret: str, username: str, issuer: str) -> str:
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_S).provisioning_uri(
        name=username, issuer_name=issuer
    )


def qr_data_uri(uri: str) -> str:
    """The otpauth:// URI as an SVG QR code in a data: URL (the portal's CSP allows data: images)."""
    return segno.make(uri, error="m").svg_data_uri(scale=5, border=2)


def time_step(now: dt.datetime) -> int:
    return int(now.timestamp()) // STEP_S


def verify(secret: str, code: str, last_used_step: int | None, now: dt.datetime) -> int:
    """The time step the code belongs to; raises TotpError if it is wrong or already used."""
    code = (code or "").strip()
    if len(code) != DIGITS or not code.isdigit():
        raise TotpError("invalid", "TOTP code is not six digits")
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_S)
    current = time_step(now)
    for step in range(current - WINDOW, current + WINDOW + 1):
        # Compared in constant time, like pyotp's own verify; we need the matching step for replay checks.
        if hmac.compare_digest(totp.generate_otp(step), code):
            if last_used_step is not None and step <= last_used_step:
                raise TotpError("replayed", "TOTP code already used")
            return step
    raise TotpError("invalid", "wrong TOTP code")
