"""The clipboard policy of a console: which direction may carry cut text, how much, and text only.

Applied to whole ClientCutText and ServerCutText messages (classic or Extended Clipboard) as the
framers in gateway/rfb.py find them. A blocked or truncated transfer becomes a `ClipboardEvent`,
which the relay audits (size and SHA-256, never the content) and counts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from broker.db.tokens import ConsolePolicy
from gateway import rfb

TO_DESKTOP = "to_desktop"
TO_CLIENT = "to_client"
# Room for the per-format size fields of an extended "provide" on top of the content limit.
_PROVIDE_OVERHEAD = 64


@dataclass(frozen=True)
class ClipboardEvent:
    """A transfer the policy stopped or cut: what the audit row and the metric say."""

    direction: str
    result: str  # "blocked" or "truncated"
    reason: str  # "policy", "cross_zone", "too_large", "not_text"
    size: int
    sha256: str


def _digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _content(formats: dict[int, bytes]) -> bytes:
    """What a provide carries, as the user copied it: the text without its NUL terminator (RFB's
    Extended Clipboard adds one), so its size and SHA-256 match those of the same text sent as classic
    cut text, and an auditor can hash a suspected text and find it; other formats as they are."""
    return b"".join(_text_body(data) if bit == rfb.CLIPBOARD_TEXT else data for bit, data in formats.items())


def _text_body(text: bytes) -> bytes:
    return text[:-1] if text.endswith(b"\0") else text


def _truncate_text(text: bytes, limit: int) -> bytes:
    """UTF-8 text of an extended provide, cut at a character boundary, still NUL-terminated."""
    return _text_body(text)[:limit].decode("utf-8", "ignore").encode("utf-8") + b"\0"


class ClipboardFilter:
    """The policy of one direction of one tunnel, as a cut-text callback for the framers."""

    def __init__(
        self, policy: ConsolePolicy, direction: str, report: Callable[[ClipboardEvent], None]
    ) -> None:
        self.policy, self.direction, self.report = policy, direction, report
        # Nothing is copied between network zones (망분리): a terminal of the other zone gets no clipboard.
        self.blocked_reason = "cross_zone" if policy.crosses_zones else "policy"
        self.allowed = policy.clipboard in ("both", direction) and not policy.crosses_zones
        self.message_type = rfb.CLIENT_CUT_TEXT if direction == TO_DESKTOP else rfb.SERVER_CUT_TEXT

    def __call__(self, cut: rfb.CutText) -> bytes | None:
        """The message to forward (whole, with its header), or None to drop it."""
        decision = self.decide(cut)
        return self._message(cut) if decision is cut else decision

    def decide(self, cut: rfb.CutText) -> bytes | rfb.CutText | None:
        """As a framer's CutTextPolicy: `cut` itself when it passes unchanged, so the framer forwards
        the message as it came instead of building it again (vdi bench tunnel)."""
        if not cut.complete:
            self._event("blocked", "too_large", cut.size, cut.digest.hex())
            return None
        return self._extended(cut) if cut.extended else self._classic(cut)

    def _event(self, result: str, reason: str, size: int, sha256: str) -> None:
        self.report(ClipboardEvent(self.direction, result, reason, size, sha256))

    def _message(self, cut: rfb.CutText) -> bytes:
        return rfb.cut_text_message(self.message_type, cut)

    def _classic(self, cut: rfb.CutText) -> bytes | rfb.CutText | None:
        # Section 7.5.6: classic cut text is Latin-1 text, so text_only has nothing to remove.
        if not self.allowed:
            self._event("blocked", self.blocked_reason, len(cut.payload), _digest(cut.payload))
            return None
        limit = self.policy.clipboard_max_bytes
        if len(cut.payload) > limit:
            self._event("truncated", "too_large", len(cut.payload), _digest(cut.payload))
            return self._message(rfb.CutText(False, cut.payload[:limit], limit))
        return cut

    def _extended(self, cut: rfb.CutText) -> bytes | rfb.CutText | None:
        flags = rfb.extended_flags(cut.payload)
        if flags & rfb.CLIPBOARD_CAPS or not flags & rfb.CLIPBOARD_PROVIDE:
            # Capabilities (whose action bits list the actions a peer supports, "provide" among them,
            # as QEMU sends right after the handshake), requests and notifications carry no content.
            return cut
        try:
            data = rfb.parse_provide(cut.payload, self.policy.clipboard_max_bytes + _PROVIDE_OVERHEAD)
        except rfb.ClipboardTooLarge:
            self._event("blocked", "too_large", len(cut.payload), _digest(cut.payload))
            return None
        content = _content(data.formats)
        if not self.allowed:
            self._event("blocked", self.blocked_reason, len(content), _digest(content))
            return None
        formats = self._filtered(data.formats, content)
        if formats is data.formats:
            return cut
        return self._message(rfb.CutText(True, rfb.build_provide(formats), 0))

    def _filtered(self, formats: dict[int, bytes], content: bytes) -> dict[int, bytes]:
        """The formats that may pass: text only if so configured, text cut to the size limit."""
        kept = formats
        if self.policy.clipboard_text_only and set(formats) - {rfb.CLIPBOARD_TEXT}:
            self._event("truncated", "not_text", len(content), _digest(content))
            kept = {bit: data for bit, data in formats.items() if bit == rfb.CLIPBOARD_TEXT}
        text = kept.get(rfb.CLIPBOARD_TEXT)
        limit = self.policy.clipboard_max_bytes
        if text is not None and len(_text_body(text)) > limit:
            body = _text_body(text)
            self._event("truncated", "too_large", len(body), _digest(body))
            kept = {**kept, rfb.CLIPBOARD_TEXT: _truncate_text(text, limit)}
        return kept
