"""A unix-socket relay in front of libvirtd's socket: a hypervisor host a test can kill.

`qemu+unix:///system?socket=<relay.path>` reaches the real libvirtd through it; `stop()` closes the
listener and every relayed connection, so the host stops answering while the shared libvirtd runs on.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path

LIBVIRT_SOCKET = "/run/libvirt/libvirt-sock"


class UnixRelay:
    """Relays a unix socket of ours to libvirtd's; `stop()` is the host dying."""

    def __init__(self, path: Path, target: str = LIBVIRT_SOCKET) -> None:
        self.path, self.target = path, target
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen()
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._frozen = threading.Event()
        threading.Thread(target=self._accept, name="libvirt-relay", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.target)
            with self._lock:
                self._open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def freeze(self) -> None:
        """The host hangs: connections stay open, but nothing gets through any more (keepalive's case)."""
        self._frozen.set()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if not self._frozen.is_set():
                    sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self._listener.close()
        self.path.unlink(missing_ok=True)
        with self._lock:
            for conn in self._open:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
