"""The lab's revocation services: a real `openssl ocsp` responder and the CRL over plain HTTP, on loopback.

openssl 3.0 binds its responder to every address (its -port takes no host); the lab has no outside network.
The responder answers for the lab intermediate CA from the PKI's index.txt, signing as the delegated
responder certificate; the CRL server hands out the files of the PKI directory (only `*.crl`).
"""

from __future__ import annotations

import http.server
import subprocess
import threading
import time
from pathlib import Path

from vdi.lab.pki import LabPki

OPENSSL = "/usr/bin/openssl"
_START_TIMEOUT_S = 10.0
_POLL_INTERVAL_S = 0.05
_READY = "waiting for OCSP client connections"


class OcspError(RuntimeError):
    """The responder could not start; the message names the port and the responder's output."""


class OcspResponder:
    """`openssl ocsp -index …` on 127.0.0.1:<port>; `url` is what certificates' AIA should point at."""

    def __init__(self, pki: LabPki, port: int, log_file: Path) -> None:
        self.pki = pki
        self.port = port
        self.log_file = log_file
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        p = self.pki
        command = [
            OPENSSL, "ocsp", "-port", str(self.port), "-index", str(p.index_file),
            "-CA", str(p.intermediate.cert_path), "-rsigner", str(p.ocsp_responder.cert_path),
            "-rkey", str(p.ocsp_responder.key_path), "-nmin", "10",
        ]  # fmt: skip
        self._log_start = self.log_file.stat().st_size if self.log_file.exists() else 0
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_listening()

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        # Readiness from the responder's own line, not a probe: openssl 3.0's responder spins on a connection
        # that closes without a request.
        while _READY not in self._log_since_start():
            if self._process is not None and self._process.poll() is not None:
                raise OcspError(
                    f"openssl ocsp exited on port {self.port}: {self.log_file.read_text()[-2000:]}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise OcspError(f"openssl ocsp did not listen on port {self.port} in {_START_TIMEOUT_S} s")
            time.sleep(_POLL_INTERVAL_S)  # polling interval, not a guess at start-up time

    def _log_since_start(self) -> str:
        with self.log_file.open("rb") as log:
            log.seek(self._log_start)
            return log.read().decode("utf-8", "replace")

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(10)
        self._process = None

    def reload(self) -> None:
        """Restart so that a rewritten index.txt is read (openssl reads it only at start or on its timer)."""
        self.stop()
        self.start()


class _CrlHandler(http.server.BaseHTTPRequestHandler):
    directory: Path

    def do_GET(self) -> None:
        name = self.path.lstrip("/")
        path = self.directory / name
        if "/" in name or not name.endswith(".crl") or not path.is_file():
            self.send_error(404)
            return
        body = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/pkix-crl")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # quiet: tests read the audit, not this
        return


class CrlServer:
    """Serves `<pki dir>/*.crl` at http://127.0.0.1:<port>/<name>.crl from a thread."""

    def __init__(self, directory: Path, port: int) -> None:
        handler = type("CrlHandler", (_CrlHandler,), {"directory": directory})
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="lab-crl", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def url(self, name: str = "intermediate.crl") -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
