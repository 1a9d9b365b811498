"""Console tokens for stock websockify, for sites that already run it instead of `vdi gateway`.

    websockify --token-plugin gateway.websockify_plugin.ConsoleTokens \\
        --token-source /path/to/vdi.toml 127.0.0.1:PORT

The token source is a smartwork-vdi configuration file; only its [database] section is used.
Tokens are consumed exactly as `vdi gateway` consumes them: single use, expiring, and refused
when the session has ended or the desktop is not running. websockify does not check Origin,
so put it behind something that does, or prefer `vdi gateway`.

websockify can only connect by plain TCP. A desktop on a host with console_access "ssh" (its VNC
listens on the host's loopback, reached through sshd) cannot be served: the plugin refuses such
tokens and logs why. Use `vdi gateway` for those hosts.

websockify relays bytes: it cannot log in to a desktop that has a VNC password (every desktop a broker
with `broker.vnc_password_key` makes), and the browser must never be given that password. The plugin
refuses those tokens too; websockify serves only desktops made without a password.

websockify itself logs the request path and, on refusal, the token it was given; the plugin
therefore masks `token=` values in every log handler websockify has set up before loading it.
"""

from __future__ import annotations

import logging
import os
import re
from urllib.parse import unquote_plus

from broker.db import Database
from broker.db.tokens import TokenRefused, consume_token, mask
from gateway.config import load_gateway_config

log = logging.getLogger(__name__)

# A `name=value` pair in a logged URL, also percent-encoded inside another value (websockify's
# `?path=%2F%3Ftoken%3D…`): a name is letters or escapes other than =, ? and &; a value runs to & (or %26).
_PAIR = re.compile(
    r"(?:(?<=[?&\s'\"/])|(?<=%3[fF])|(?<=%26)|^)"
    r"(?P<name>(?:[A-Za-z0-9_.+-]|%(?!3[dDfF]|26)[0-9A-Fa-f]{2})+)"
    r"(?P<sep>=|%3[dD])"
    r"(?P<value>(?:[^&\s'\"%]|%(?!26)[0-9A-Fa-f]{2})*)"
)
# websockify's refusal names the token itself: "Token '…' not found".
_QUOTED = re.compile(r"(?P<quoted>Token ')[^']*(?=')", re.IGNORECASE)


def _is_token_name(name: str) -> bool:
    # websockify decodes the query (parse_qs), so `%74oken` or `TOK%45N` reach it as a token too.
    for _ in range(3):
        decoded = unquote_plus(name)
        if decoded == name:
            break
        name = decoded
    return name.lower() == "token"


def _mask_pair(match: re.Match) -> str:
    name, sep, value = match.group("name", "sep", "value")
    return f"{name}{sep}***" if _is_token_name(name) else f"{name}{sep}{_mask_tokens(value)}"


def _mask_tokens(text: str) -> str:
    return _QUOTED.sub(r"\g<quoted>***", _PAIR.sub(_mask_pair, text))


class TokenRedactingFilter(logging.Filter):
    """Rewrites log records so that no console token reaches a log handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = _mask_tokens(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def redact_tokens_in_logs(logger: logging.Logger | None = None) -> None:
    """Attach the redacting filter to the handlers of `logger` (default: root), once each."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, TokenRedactingFilter) for f in handler.filters):
            handler.addFilter(TokenRedactingFilter())


class ConsoleTokens:
    """websockify token plugin: token → (host, port) of the desktop's display, or None."""

    def __init__(self, src: str) -> None:
        # Read the file now so a wrong path or a bad config stops websockify at start-up,
        # not at the first user's connection.
        self.source = src
        self.settings = load_gateway_config(src).database
        self._db: Database | None = None
        self._db_pid = 0
        redact_tokens_in_logs()

    def lookup(self, token: str) -> tuple[str, str] | None:
        try:
            with self._database().transaction() as session:
                target = consume_token(session, token)
        except TokenRefused as exc:
            log.warning("console refused: %s (token %s)", exc.reason, mask(token) or "missing")
            return None
        except Exception:
            # websockify turns an exception here into a dropped connection with the token in
            # its log; refuse cleanly instead and keep the details in our own log.
            log.exception("console refused: token lookup failed (token %s)", mask(token))
            return None
        if target.route != "direct":
            log.warning(
                "console refused: session %s is on host %s, whose displays are reached over ssh; "
                "websockify can only connect directly, use `vdi gateway` for this host",
                target.session_id,
                target.host_name,
            )
            return None
        if target.vnc_password_sealed is not None:
            log.warning(
                "console refused: desktop of session %s has a VNC password, which only `vdi gateway` "
                "can log in with; websockify relays bytes only",
                target.session_id,
            )
            return None
        log.info("console granted: session %s to %s:%d", target.session_id, target.host, target.port)
        return target.host, str(target.port)

    def _database(self) -> Database:
        # websockify forks a process per connection; a pooled connection inherited across fork
        # is shared with the parent, so each process opens its own engine on first use.
        if self._db is None or self._db_pid != os.getpid():
            self._db = Database(self.settings)
            self._db_pid = os.getpid()
        return self._db
