"""VNC passwords of desktops: made by the broker, sealed at rest, opened only by the gateway.

A desktop's VNC server asks for its password (RFC 6143 section 7.2.2), so a process on the host's
loopback cannot reach a display without a console token. The password goes into the hypervisor's
domain definition and, sealed, into the desktop's row; the browser never sees it.

The seal is AES-256-GCM under a key derived (HKDF-SHA256) from `vnc_password_key`, which the broker
and the gateway both configure. The desktop's domain name is the associated data, so a sealed password
copied onto another desktop's row does not open.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import string

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# VNC authentication uses the first 8 bytes of a password; 8 of 62 characters are about 47 bits,
# guessed online only (QEMU and Xvnc delay after failures), and a new desktop gets a new one.
PASSWORD_LENGTH = 8
_ALPHABET = string.ascii_letters + string.digits
_NONCE_BYTES = 12
_KEY_INFO = b"smartwork-vdi vnc passwords v1"


class SealError(Exception):
    """A sealed password does not open (another key, or not ours). Never carries the password."""


def new_vnc_password() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(PASSWORD_LENGTH))


class VncPasswordBox:
    """Seals and opens desktops' VNC passwords with the configured key."""

    def __init__(self, key_material: str) -> None:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KEY_INFO)
        self._aead = AESGCM(hkdf.derive(key_material.encode("utf-8")))

    def __repr__(self) -> str:
        return "VncPasswordBox(***)"

    def seal(self, domain_name: str, password: str) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, password.encode("utf-8"), domain_name.encode("utf-8"))
        return base64.b64encode(nonce + sealed).decode("ascii")

    def open(self, domain_name: str, sealed: str) -> str:
        try:
            raw = base64.b64decode(sealed, validate=True)
            plain = self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], domain_name.encode("utf-8"))
        except (InvalidTag, binascii.Error, ValueError):
            raise SealError(
                f"VNC password of desktop {domain_name} does not decrypt (key changed?)"
            ) from None
        return plain.decode("utf-8")
