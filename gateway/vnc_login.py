"""The gateway logs in to a desktop's VNC server with the desktop's password (RFC 6143 section 7.1 to 7.3).

Speaks the version the server offers (3.3, 3.7 or 3.8), prefers VNC authentication, and asks for a
shared session (ClientInit shared-flag 1): a second console of the same session must not disconnect
the first. Returns the desktop's ServerInit, which the gateway then gives the browser.
"""

from __future__ import annotations

import struct

from tornado.iostream import IOStream

from gateway import rfb


async def _read(stream: IOStream, size: int) -> bytes:
    return await stream.read_bytes(size) if size else b""


async def _refusal_reason(stream: IOStream) -> str:
    """The reason string a server sends with a refusal (section 7.1.2/7.1.3); read bounded, not shown."""
    length = struct.unpack(">I", await _read(stream, 4))[0]
    if length <= rfb.MAX_SECURITY_REASON:
        await _read(stream, length)
    return "desktop refused the connection"


async def _security_type(stream: IOStream, minor: int) -> int:
    if minor == 3:
        chosen = struct.unpack(">I", await _read(stream, 4))[0]
        if chosen == rfb.SECURITY_INVALID:
            raise rfb.RfbError("auth", await _refusal_reason(stream))
        return chosen
    count = (await _read(stream, 1))[0]
    if count == 0:
        raise rfb.RfbError("auth", await _refusal_reason(stream))
    offered = await _read(stream, count)
    for wanted in (rfb.SECURITY_VNC_AUTH, rfb.SECURITY_NONE):
        if wanted in offered:
            await stream.write(bytes((wanted,)))
            return wanted
    raise rfb.RfbError("auth", "desktop offers no security type the gateway speaks")


async def _security_result(stream: IOStream, minor: int) -> None:
    if await _read(stream, 4) == rfb.SECURITY_RESULT_OK:
        return
    if minor == 8:
        await _refusal_reason(stream)
    raise rfb.RfbError("auth", "desktop refused the VNC password")


async def log_in(stream: IOStream, password: str) -> rfb.ServerInit:
    """Handshake with the desktop up to its ServerInit; raises rfb.RfbError when refused."""
    minor = rfb.negotiated_minor(rfb.parse_version(await _read(stream, 12)))
    await stream.write(rfb.version_banner(minor))
    security = await _security_type(stream, minor)
    if security == rfb.SECURITY_VNC_AUTH:
        await stream.write(rfb.vnc_auth_response(password, await _read(stream, 16)))
        await _security_result(stream, minor)
    elif security != rfb.SECURITY_NONE:
        raise rfb.RfbError("auth", "desktop asks for a security type the gateway does not speak")
    elif minor == 8:
        await _security_result(stream, minor)
    await stream.write(b"\x01")  # ClientInit: shared
    header = await _read(stream, 24)
    return rfb.ServerInit.parse(header, await _read(stream, rfb.ServerInit.name_length(header)))
