"""Portal text in Korean and English, and how a request's language is chosen."""

import pytest

from broker.web.i18n import MESSAGES, choose_language, error_message, translate


def test_both_languages_have_the_same_messages():
    assert MESSAGES["ko"].keys() == MESSAGES["en"].keys()


def test_both_languages_use_the_same_placeholders():
    import string

    def fields(text):
        return {name for _, name, _, _ in string.Formatter().parse(text) if name}

    for key, english in MESSAGES["en"].items():
        assert fields(MESSAGES["ko"][key]) == fields(english), key


def test_login_titles():
    assert translate("ko", "login.title") == "스마트워크 VDI 로그인"
    assert translate("en", "login.title") == "Smart Work VDI sign in"


def test_translate_fills_params_and_survives_missing_ones():
    assert translate("en", "nav.signed_in_as", name="Kim") == "Signed in as Kim"
    assert translate("en", "nav.signed_in_as") == "Signed in as {name}"
    assert translate("en", "no.such.key") == "no.such.key"


@pytest.mark.parametrize(
    ("query", "cookie", "header", "expected"),
    [
        ("en", "ko", "ko-KR", "en"),  # explicit choice in the URL wins
        (None, "en", "ko-KR", "en"),  # then the remembered choice
        ("fr", None, "en-US,en;q=0.9", "en"),  # unknown values are ignored
        (None, None, "fr-FR, en;q=0.5, ko;q=0.8", "ko"),  # browser preference by q-value
        (None, None, "ko;q=0, en;q=0.1", "en"),  # q=0 means "not acceptable"
        (None, None, "de, fr", "ko"),  # nothing we speak: the configured default
        (None, None, None, "ko"),
    ],
)
def test_choose_language(query, cookie, header, expected):
    assert choose_language(query, cookie, header, default="ko") == expected


def test_error_message_uses_translation_with_params_or_falls_back():
    assert "local" in error_message("ko", "host_unreachable", "fallback", {"detail": "host local: down"})
    assert error_message("ko", "host_unreachable", "fallback", {}) == "fallback"
    assert error_message("ko", "invalid_field", "password: Field required", {}) == "password: Field required"
