"""The login-method contract (sso/login.py), its registry (sso/methods.py) and the config that names methods."""

from __future__ import annotations

import asyncio

import pytest

from sso import methods
from sso.base import Identity, InvalidCredentials
from sso.config import TotpSettings
from sso.login import Login, LoginMethod
from sso.second_factor import SecondFactor
from tests.fixtures.broker import IDENTITIES, make_broker_config
from tests.fixtures.gateway import metric
from tests.fixtures.login_methods import PASSPHRASE, Passphrase
from vdi.config import ConfigError


class Fixed(LoginMethod):
    """Accepts anyone as kimmj, upper-cases nothing, lets the test choose who is blocked or allowed."""

    name = "fixed"

    def __init__(self, blocked: set[str] = frozenset(), allowed: set[str] | None = None) -> None:
        self.blocked, self.allowed = blocked, allowed

    async def authenticate(self, credentials, audit: dict[str, str]) -> Identity:
        audit["step"] = "authenticated"
        return Identity(" KimMJ ", "김민준", groups=["mois"])

    def normalize(self, identity: Identity) -> Identity:
        return Identity(identity.username.strip().lower(), identity.display_name, groups=identity.groups)

    def is_blocked(self, identity: Identity) -> bool:
        return identity.username in self.blocked

    def is_allowed(self, identity: Identity) -> bool:
        return self.allowed is None or identity.username in self.allowed


def login(method: LoginMethod, audit: dict | None = None) -> Login:
    return asyncio.run(method.login(None, audit))


def test_the_template_normalizes_and_answers_who_how_and_the_audit():
    result = login(Fixed())
    assert (result.username, result.groups, result.method) == ("kimmj", ["mois"], "fixed")
    assert result.audit == {"step": "authenticated"}


@pytest.mark.parametrize(
    ("method", "reason"),
    [
        (Fixed(blocked={"kimmj"}), "fixed login of 'kimmj' refused: user is blocked"),
        (Fixed(allowed={"choijw"}), "fixed login of 'kimmj' refused: user not allowed"),
    ],
)
def test_blocked_and_not_allowed_users_are_refused_like_a_wrong_secret(method, reason):
    audit: dict = {}
    with pytest.raises(InvalidCredentials) as refused:
        login(method, audit)
    assert refused.value.reason == reason
    assert refused.value.public_message == "The user name or password is incorrect."
    assert audit == {"step": "authenticated"}  # what the method learnt reaches the refusal's audit


def test_a_subclass_may_not_override_the_template():
    with pytest.raises(TypeError, match="must not override login"):

        class Sneaky(LoginMethod):
            name = "sneaky"

            async def login(self, credentials, audit=None):  # type: ignore[override]
                raise AssertionError


def test_a_subclass_needs_a_name_fit_for_config_and_metrics():
    with pytest.raises(TypeError, match="name must match"):

        class Nameless(LoginMethod):
            async def authenticate(self, credentials, audit):
                raise AssertionError

    with pytest.raises(TypeError, match="name must match"):

        class Shouting(LoginMethod):
            name = "Password!"

            async def authenticate(self, credentials, audit):
                raise AssertionError


def test_a_subclass_without_authenticate_is_refused_when_defined():
    with pytest.raises(TypeError, match=r"Half must implement authenticate"):

        class Half(LoginMethod):
            name = "half"


def test_the_toy_method_passes_through_the_same_template():
    from tests.fixtures.login_methods import PassphraseLogin

    result = asyncio.run(PassphraseLogin().login(Passphrase("kimmj", PASSPHRASE)))
    assert result.identity == IDENTITIES["kimmj"]
    assert PASSPHRASE not in repr(Passphrase("kimmj", PASSPHRASE))


def test_registering_a_method_starts_its_login_series_at_zero():
    class Probe(LoginMethod):
        name = "zero-series-probe"

        async def authenticate(self, credentials, audit):
            raise AssertionError

    methods.register(Probe)
    try:
        for result in ("success", "failure", "error"):
            assert metric("vdi_logins_total", method="zero-series-probe", result=result) == 0.0
        assert methods.method_class("zero-series-probe") is Probe
    finally:
        methods.unregister(Probe.name)
    with pytest.raises(methods.UnknownLoginMethod, match="known: certificate, password"):
        methods.method_class("zero-series-probe")


def test_one_name_one_class():
    class Impostor(LoginMethod):
        name = "password"

        async def authenticate(self, credentials, audit):
            raise AssertionError

    with pytest.raises(ValueError, match="already registered"):
        methods.register(Impostor)


# -- config ---------------------------------------------------------------------------------------


def config(tmp_path, **sections):
    broker = {"cookie_secret": "login-method-config-" + "0" * 32, **sections.pop("broker", {})}
    return make_broker_config(tmp_path / "broker.db", broker=broker, **sections)


def test_default_is_todays_password_only(tmp_path):
    assert config(tmp_path).enabled_login_methods() == ["password"]


def test_an_unknown_method_is_a_config_error_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"broker\.login_methods.*unknown login method 'kerberos'"):
        config(tmp_path, broker={"login_methods": ["password", "kerberos"]})


def test_a_method_listed_twice_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"broker\.login_methods.*'password' is listed twice"):
        config(tmp_path, broker={"login_methods": ["password", "password"]})


def test_an_unknown_second_factor_method_is_a_config_error_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"totp\.methods: \[0\] unknown login method 'sms'"):
        config(tmp_path, totp={"methods": ["sms"]})


def test_certificate_listed_without_its_section_enabled_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"broker\.login_methods: 'certificate' is listed"):
        config(tmp_path, broker={"login_methods": ["password", "certificate"]})


def test_a_registered_method_may_be_enabled(tmp_path, passphrase_method):
    enabled = config(tmp_path, broker={"login_methods": ["passphrase"]}).enabled_login_methods()
    assert enabled == ["passphrase"]


# -- the second-factor policy --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "client_ip", "required"),
    [
        ("password", "198.51.100.7", True),
        ("password", "10.1.2.3", False),  # inside a center
        ("certificate", "198.51.100.7", False),  # not in [totp] methods by default
        ("passphrase", "198.51.100.7", False),
    ],
)
def test_default_policy_holds_password_logins_from_outside(method, client_ip, required):
    policy = SecondFactor(TotpSettings(required_outside_centers=True, center_networks=["10.0.0.0/8"]))
    assert policy.required(method, client_ip) is required


def test_policy_wraps_whichever_methods_it_names():
    settings = TotpSettings(required_outside_centers=True, methods=["certificate", "passphrase"])
    policy = SecondFactor(settings)
    assert policy.required("certificate", "198.51.100.7")
    assert policy.required("passphrase", "198.51.100.7")
    assert not policy.required("password", "198.51.100.7")
    assert not SecondFactor(settings.model_copy(update={"required_outside_centers": False})).required(
        "certificate", "198.51.100.7"
    )
