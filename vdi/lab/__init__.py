"""The local lab: real slapd with the demo directory and a real libvirtd, started on loopback.

`vdi lab start|stop|status`, `make demo` and the test fixtures all go through here, so the
demo and the tests exercise the same components the same way.
"""

from __future__ import annotations

from vdi.config import Config


class Lab:
    def __init__(self, config: Config) -> None:
        from vdi.lab.libvirtd import LibvirtDaemon
        from vdi.lab.slapd import Slapd

        self.config = config
        state = config.lab.state_dir
        self.slapd = Slapd(state / "slapd", config.lab.ldap_port, config.lab.ldap_suffix)
        self.libvirtd = LibvirtDaemon(state / "libvirt")

    def start(self) -> None:
        self.config.lab.state_dir.mkdir(parents=True, exist_ok=True)
        self.libvirtd.start()
        self.slapd.start()

    def stop(self) -> None:
        self.slapd.stop()
        self.libvirtd.stop()

    def healthy(self) -> bool:
        return self.slapd.healthy() and self.libvirtd.healthy()

    def describe(self) -> str:
        return "\n".join([self.slapd.describe(), self.libvirtd.describe()])
