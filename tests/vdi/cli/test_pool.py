"""`vdi pool rollout --wait` on a terminal: one line redrawn in place with a bar of the pool's desktops on the
new version. Plain lines elsewhere, the exit statuses and the real rollouts: tests/broker/test_rollout*.py."""

import os
import select

from vdi.cli.pool import RolloutWatch, progress_line


def status(state: str, on_version: int, total: int, started: int) -> dict:
    progress = {
        "canaries_started": started,
        "canaries_wanted": 1,
        "desktops_on_version": on_version,
        "desktops_total": total,
        "finished": state in ("promoted", "rolled_back"),
    }
    rollout = {"id": 7, "image": "demo", "version": "v2", "state": state, "progress": progress}
    return {"pool": "mois-office", "image": "demo:v1", "rollout": rollout}


def read_all(primary: int) -> str:
    """Everything written to the terminal so far (a read may return part of it)."""
    data = b""
    while select.select([primary], [], [], 0)[0]:
        data += os.read(primary, 4096)
    return data.decode()


def test_a_rollout_is_redrawn_in_place_with_a_bar_on_a_terminal():
    primary, secondary = os.openpty()
    try:
        with open(secondary, "w", closefd=False) as terminal:
            watch = RolloutWatch(terminal)
            watch.show(status("creating", 0, 2, 0))
            watch.show(status("canary", 1, 3, 1))
            watch.show(status("promoted", 2, 2, 1))
            watch.close()
        written = read_all(primary).replace("\r\n", "\n")
    finally:
        os.close(primary)
        os.close(secondary)
    drawn = written.split("\r")
    assert drawn[0] == ""
    assert drawn[1].rstrip() == (
        "pool mois-office: rollout 7 creating: [------------------------] 0 of 2 desktop(s) on demo:v2, "
        "canaries 0 of 1 started"
    )
    assert drawn[2].startswith("pool mois-office: rollout 7 canary: [########----------------] 1 of 3")
    assert drawn[3] == (
        "pool mois-office: rollout 7 promoted: [########################] 2 of 2 desktop(s) on demo:v2, "
        "canaries 1 of 1 started\n"
    )


def test_a_shorter_line_covers_the_end_of_the_longer_one_before_it():
    primary, secondary = os.openpty()
    try:
        with open(secondary, "w", closefd=False) as terminal:
            watch = RolloutWatch(terminal)
            long, short = status("rolling_back", 0, 10, 1), status("canary", 0, 1, 1)
            watch.show(long)
            watch.show(short)
        written = read_all(primary)
    finally:
        os.close(primary)
        os.close(secondary)
    first, second = written.split("\r")[1:]
    assert len(second) >= len(first) == len(progress_line(long, with_bar=True))
