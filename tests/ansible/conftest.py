"""Helpers of the Ansible tests: run ansible-playbook from the venv with the repository's ansible.cfg."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
BIN = Path(sys.executable).parent


def ansible_playbook(*args: str, timeout_s: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    return subprocess.run(
        [str(BIN / "ansible-playbook"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ANSIBLE_DIR,
        check=False,
        timeout=timeout_s,
    )


def recap(result: subprocess.CompletedProcess) -> dict[str, int]:
    """The PLAY RECAP counters of the only host (ok, changed, failed, ...)."""
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    line = result.stdout.split("PLAY RECAP", 1)[1]
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", line)}
