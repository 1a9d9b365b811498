"""broker/db/vnc_passwords.py: new passwords, and seals that open only with the key and the desktop."""

from __future__ import annotations

import pytest

from broker.db.vnc_passwords import PASSWORD_LENGTH, SealError, VncPasswordBox, new_vnc_password

KEY = "k" * 32


def test_passwords_are_eight_random_alphanumerics():
    passwords = {new_vnc_password() for _ in range(200)}
    assert len(passwords) == 200
    assert all(len(p) == PASSWORD_LENGTH and p.isalnum() and p.isascii() for p in passwords)


def test_a_seal_opens_with_the_same_key_and_desktop_only():
    sealed = VncPasswordBox(KEY).seal("vdi-a", "Secret12")
    assert "Secret12" not in sealed
    assert VncPasswordBox(KEY).open("vdi-a", sealed) == "Secret12"
    with pytest.raises(SealError, match="vdi-b"):
        VncPasswordBox(KEY).open("vdi-b", sealed)  # copied onto another desktop's row
    with pytest.raises(SealError):
        VncPasswordBox("x" * 32).open("vdi-a", sealed)


@pytest.mark.parametrize("sealed", ["", "not base64!", "AAAA"])
def test_garbage_is_refused_without_the_password_in_the_message(sealed):
    with pytest.raises(SealError) as refused:
        VncPasswordBox(KEY).open("vdi-a", sealed)
    assert "key changed" in str(refused.value)


def test_the_box_never_shows_its_key():
    assert KEY not in repr(VncPasswordBox(KEY))
