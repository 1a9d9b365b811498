"""Every role and playbook passes ansible-lint's production profile, with no skip list."""

from __future__ import annotations

import os
import subprocess

from tests.fixtures.ansible import ANSIBLE_DIR, BIN, REPO


def test_ansible_lint_production_profile_passes():
    env = {**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"), "NO_COLOR": "1"}
    result = subprocess.run(
        [str(BIN / "ansible-lint"), "--offline", "--profile", "production", "ansible/"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        check=False,
        timeout=300,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Profile 'production' was required, and it passed" in result.stderr + result.stdout


def test_lint_config_has_no_skip_list():
    config = (REPO / ".ansible-lint").read_text()

    assert "profile: production" in config
    assert "skip_list" not in config and "warn_list" not in config
