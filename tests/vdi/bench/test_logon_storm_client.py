"""The logon storm's lean browser (vdi/bench/logon_storm.py, LeanBrowser) against a real Tornado server: it
keeps its connection, keeps and clears cookies, sends the XSRF header, reads both body framings, opens
again after the server closed, and reads a WebSocket's first binary message.

The whole path through HAProxy, brokers and gateways runs in tests/e2e/test_failover.py (storm())."""

import asyncio
import json

import pytest
import tornado.httpserver
import tornado.web
import tornado.websocket
from tornado.netutil import bind_sockets

from vdi.bench.logon_storm import LeanBrowser, StepFailed


class Seen:
    def __init__(self) -> None:
        self.connections: list[int] = []


class Page(tornado.web.RequestHandler):
    def get(self) -> None:
        self.settings["seen"].connections.append(id(self.request.connection.stream))
        self.set_cookie("_xsrf", "xsrf-value")
        self.set_cookie("flavour", "plain")
        self.write("<p>page</p>")


class Chunked(tornado.web.RequestHandler):
    async def get(self) -> None:
        self.write(b"first,")
        await self.flush()  # a body without Content-Length: chunked
        self.write(b"second")


class Echo(tornado.web.RequestHandler):
    def post(self) -> None:
        self.settings["seen"].connections.append(id(self.request.connection.stream))
        self.clear_cookie("flavour")
        self.write(
            {
                "cookies": {name: morsel.value for name, morsel in self.request.cookies.items()},
                "xsrf_header": self.request.headers.get("X-XSRFToken"),
                "body": json.loads(self.request.body),
            }
        )


class Closing(tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_header("Connection", "close")
        self.write("bye")


class Banner(tornado.websocket.WebSocketHandler):
    def check_origin(self, origin: str) -> bool:
        return origin == self.settings["front"]

    def open(self) -> None:
        self.write_message(b"RFB 003.008\n", binary=True)


class Missing(tornado.web.RequestHandler):
    def get(self) -> None:
        raise tornado.web.HTTPError(503)


async def serve(seen: Seen):
    sockets = bind_sockets(0, "127.0.0.1")
    port = sockets[0].getsockname()[1]
    front = f"http://127.0.0.1:{port}"
    app = tornado.web.Application(
        [(r"/page", Page), (r"/chunked", Chunked), (r"/echo", Echo), (r"/closing", Closing),
         (r"/ws", Banner), (r"/down", Missing)],
        seen=seen,
        front=front,
    )  # fmt: skip
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets(sockets)
    return server, front


def test_the_lean_browser_keeps_its_connection_and_cookies_and_reads_every_answer():
    async def scenario() -> None:
        seen = Seen()
        server, front = await serve(seen)
        try:
            async with LeanBrowser(front, None) as browser:
                assert await browser.request("GET", "/page") == (200, b"<p>page</p>")
                status, body = await browser.request("POST", "/echo", {"k": "v"})
                assert status == 200
                answer = json.loads(body)
                assert answer["cookies"] == {"_xsrf": "xsrf-value", "flavour": "plain"}
                assert answer["xsrf_header"] == "xsrf-value"
                assert answer["body"] == {"k": "v"}
                assert "flavour" not in browser.cookies  # cleared by the server
                assert len(set(seen.connections)) == 1  # one kept connection, like a browser's
                assert await browser.request("GET", "/chunked") == (200, b"first,second")
                assert await browser.request("GET", "/closing") == (200, b"bye")
                assert await browser.request("GET", "/page") == (200, b"<p>page</p>")
                assert len(set(seen.connections)) == 2  # opened again after the server closed
                assert (await browser.request("GET", "/down"))[0] == 503
                url = front.replace("http://", "ws://") + "/ws?token=x"
                assert await browser.console_banner(url) == b"RFB 003.008\n"
        finally:
            server.stop()

    asyncio.run(scenario())


def test_a_refused_step_names_the_step_and_the_status():
    async def scenario() -> None:
        server, front = await serve(Seen())
        try:
            async with LeanBrowser(front, None) as browser:
                # /login is no route here: the portal step answers 404.
                with pytest.raises(StepFailed) as failed:
                    await browser.logon("user", "password", "pool")
                assert (failed.value.step, failed.value.reason) == ("portal", "HTTP 404")
        finally:
            server.stop()

    asyncio.run(scenario())
