"""Settings of the directory (LDAP) authenticator, login lockout and the TOTP second factor."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, IPvAnyNetwork, SecretStr, field_validator, model_validator

_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")


class LdapSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field("ldap://127.0.0.1:3389", description="ldap:// or ldaps:// URL of the directory")
    user_base: str = Field(description="DN under which user entries are searched")
    user_attr: str = Field("uid", description="attribute holding the login name")
    user_object_class: str = Field("inetOrgPerson", description="object class of user entries")
    display_name_attr: str = Field("displayName", description="attribute shown as the user's name")
    group_base: str = Field(description="DN under which group entries are searched")
    group_object_class: str = Field("groupOfNames", description="object class of group entries")
    group_member_attr: str = Field("member", description="group attribute listing member DNs")
    group_name_attr: str = Field(
        "cn", description="group attribute used as the group name in pool entitlements"
    )
    bind_dn: str | None = Field(None, description="service account used to find users; anonymous if unset")
    refusal_floor_s: float = Field(
        0.2,
        ge=0,
        le=5,
        description="a refused password login answers after at least this long, known user or not, so the "
        "answer's timing does not tell which user names exist (0: answer as soon as the directory does)",
    )
    decoy_dn: str | None = Field(
        None,
        description="an existing entry with a random password no one uses (and no lockout policy): unknown "
        "user names are bound against it, so the directory spends the same password check as for a real "
        "user and the answer's timing does not reveal which names exist (unset: a DN that does not exist, "
        "which many directories answer faster)",
    )
    bind_password: SecretStr | None = Field(None, description="password of bind_dn")
    timeout_s: float = Field(
        2.0,
        gt=0,
        le=60,
        description="connect and response timeout of directory requests: a directory that is down or hangs "
        "answers 'directory unavailable' after this long",
    )
    start_tls: bool = Field(False, description="upgrade an ldap:// connection with StartTLS before binding")
    ca_file: Path | None = Field(
        None, description="PEM CA bundle that verifies the directory's certificate (ldaps:// and StartTLS)"
    )


class LockoutSettings(BaseModel):
    """Guessing resistance: failed logins counted per user name and per source address, in the database."""

    model_config = ConfigDict(extra="forbid")

    window_s: int = Field(300, ge=10, le=86400, description="period over which failed logins are counted")
    user_max_failures: int = Field(
        5, ge=1, le=1000, description="failed logins of one user name within window_s that lock it"
    )
    source_max_failures: int = Field(
        20,
        ge=1,
        le=100000,
        description="failed logins from one source address within window_s that lock it; a login takes its "
        "place while it is being checked (addresses on a registered center terminal network count by "
        "center_source_max_failures and center_source_max_in_flight instead)",
    )
    lock_s: int = Field(
        300, ge=1, le=86400, description="how long a locked user name or address stays locked"
    )
    center_source_max_failures: int = Field(
        100,
        ge=1,
        le=100000,
        description="failed logins from one address on a registered center terminal network within window_s "
        "that lock it; there only completed failures count, not logins still being checked (all of a "
        "center's terminals may reach the broker through one NAT address)",
    )
    center_source_max_in_flight: int = Field(
        200,
        ge=1,
        le=100000,
        description="logins from one center-network address being checked at the same time, counted across "
        "brokers in the database; more are refused with 429 until some finish",
    )


class TotpSettings(BaseModel):
    """Second factor (RFC 6238 TOTP) for logins from outside the smart work centers (sso/second_factor.py)."""

    model_config = ConfigDict(extra="forbid")

    required_outside_centers: bool = Field(
        False,
        description="ask for a TOTP code when a login by one of `methods` comes from outside center_networks",
    )
    methods: list[str] = Field(
        default_factory=lambda: ["password"],
        description="login methods (names as in broker.login_methods) the second factor applies to; "
        "certificate logins are exempt unless listed",
    )
    center_networks: list[str] = Field(
        default_factory=list,
        description="CIDR networks of the smart work centers; logins from inside need no TOTP code and "
        "are the only place a user may enrol one",
    )
    issuer: str = Field("smartwork-vdi", min_length=1, max_length=64, description="issuer shown by apps")
    secret_key: SecretStr | None = Field(
        None,
        min_length=32,
        description="key that encrypts TOTP secrets at rest; derived from broker.cookie_secret if unset",
    )
    pending_ttl_s: int = Field(
        120, ge=30, le=600, description="time allowed between the password step and the TOTP code"
    )

    @field_validator("center_networks")
    @classmethod
    def _networks_parse(cls, value: list[str]) -> list[str]:
        for index, text in enumerate(value):
            try:
                ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise ValueError(f"[{index}] {text!r} is not a CIDR network") from None
        return value


class CertificateSettings(BaseModel):
    """`[certificate]`: client-certificate login (GPKI-style), its revocation checks and user mapping."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="offer certificate login on the portal and the API")
    trust_anchors: list[Path] = Field(
        default_factory=list, description="PEM files of the root CAs user certificates must chain to"
    )
    intermediates: list[Path] = Field(
        default_factory=list, description="PEM files of intermediate CAs used to build chains"
    )
    required_policies: list[str] = Field(
        default_factory=list, description="certificate policy OIDs a user certificate must all carry"
    )
    mapping: Literal["userCertificate", "subject_dn", "san", "issuer_serial"] = Field(
        "userCertificate", description="how a certificate is mapped to a directory user"
    )
    subject_dn_template: str | None = Field(
        None,
        description="subject_dn mapping: user DN with {attribute} placeholders from the subject (e.g. "
        "uid={UID},ou=people,dc=example); unset means the subject DN must equal the user's DN",
    )
    san_type: Literal["email", "upn"] = Field("email", description="san mapping: which subjectAltName to use")
    san_attribute: str = Field("mail", description="san mapping: directory attribute holding that name")
    ocsp_url: str | None = Field(None, description="OCSP responder to ask instead of the certificate's AIA")
    crl_url: str | None = Field(None, description="CRL to fetch instead of the certificate's CRL DP")
    fail_mode: Literal["closed", "open"] = Field(
        "closed", description="when no revocation source answers: closed refuses, open allows and audits"
    )
    cache_s: int = Field(60, ge=0, le=3600, description="how long one revocation answer is reused")
    revocation_timeout_s: float = Field(5.0, gt=0, le=60, description="timeout of each OCSP/CRL request")
    trusted_proxies: list[IPvAnyNetwork] = Field(
        default_factory=list, description="addresses/CIDRs of TLS terminators allowed to send the header"
    )
    proxy_header: str = Field(
        "X-SSL-Client-Cert", description="header with the verified client certificate, URL-encoded PEM"
    )

    @model_validator(mode="after")
    def _anchors_when_enabled(self) -> CertificateSettings:
        if self.enabled and not self.trust_anchors:
            raise ValueError("trust_anchors: at least one trust anchor file is required when enabled")
        for oid in self.required_policies:
            if not _OID.match(oid):
                raise ValueError(f"required_policies: not an OID: {oid!r}")
        return self
