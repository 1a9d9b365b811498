"""Run tasks inside a directory tree with chroot(8): provisions a debootstrapped image root offline.

community.general.chroot does the same, but Galaxy is not reachable from our build machines and
ansible-core does not ship it; this is the small subset the image build needs. The host is the path of
the root (`ansible_host` or the inventory name); modules run with the root's own /usr/bin/python3.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess

from ansible.errors import AnsibleError
from ansible.plugins.connection import ConnectionBase

DOCUMENTATION = """
name: smartwork_chroot
short_description: run tasks in a chroot on the controller
description:
  - Runs commands with chroot(8) inside a directory tree on the controller (as root).
author: smartwork-vdi
options:
  remote_addr:
    description: path of the root directory
    default: inventory_hostname
    vars:
      - name: inventory_hostname
      - name: ansible_host
"""


class Connection(ConnectionBase):
    transport = "smartwork_chroot"
    has_pipelining = True
    default_user = "root"

    def _root(self) -> str:
        root = self.get_option("remote_addr")
        if not os.path.isfile(os.path.join(root, "bin", "sh")):
            raise AnsibleError(f"{root} is not a root filesystem (no /bin/sh)")
        return root

    def _connect(self):
        self._root()
        self._connected = True
        return self

    def exec_command(self, cmd, in_data=None, sudoable=False):
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        argv = ["chroot", self._root(), "/bin/sh", "-c", cmd]
        process = subprocess.run(argv, input=in_data, capture_output=True, check=False)
        return process.returncode, process.stdout, process.stderr

    def _inside(self, path: str) -> str:
        # Paths name locations inside the root; normpath keeps "../" from climbing out of it.
        return os.path.join(self._root(), os.path.normpath("/" + path).lstrip("/"))

    def put_file(self, in_path, out_path):
        super().put_file(in_path, out_path)
        try:
            shutil.copyfile(in_path, self._inside(out_path))
        except OSError as exc:
            raise AnsibleError(f"cannot copy into the chroot: {shlex.quote(out_path)}: {exc}") from exc

    def fetch_file(self, in_path, out_path):
        super().fetch_file(in_path, out_path)
        try:
            shutil.copyfile(self._inside(in_path), out_path)
        except OSError as exc:
            raise AnsibleError(f"cannot copy out of the chroot: {shlex.quote(in_path)}: {exc}") from exc

    def close(self):
        self._connected = False
