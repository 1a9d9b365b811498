"""The demo's supervisor restarts a dead service with backoff and leaves a live one alone (real processes)."""

import logging
import os
import signal
import subprocess

import pytest

from vdi.demo import BACKOFF_MAX_S, STABLE_S, Supervised, backoff_delay, stop_on_signals


def test_backoff_doubles_up_to_thirty_seconds():
    assert [backoff_delay(n) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff_delay(1000) == BACKOFF_MAX_S


def test_a_killed_service_is_restarted_after_its_backoff_and_the_other_stays(caplog):
    caplog.set_level(logging.WARNING, logger="vdi.demo")
    started: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        started.append(subprocess.Popen(["sleep", "300"]))
        return started[-1]

    broker, gateway = Supervised("broker", start), Supervised("gateway", start)
    try:
        first, gateway_process = broker.process, gateway.process
        first.send_signal(signal.SIGKILL)
        first.wait()
        now = broker.started_at + 5
        broker.check(now)
        gateway.check(now)
        assert broker.restart_at == now + 1 and broker.process is first  # waits out its backoff
        broker.check(now + 0.5)
        assert broker.process is first
        broker.check(now + 1)
        assert broker.process is not first and broker.process.poll() is None
        # Both the crash and the restart are logged, with the backoff and the new process.
        assert caplog.messages == [
            "demo broker exited with status -9; restarting it in 1 s (crash 1 in a row)",
            f"demo broker restarted (pid {broker.process.pid})",
        ]
        assert gateway.process is gateway_process and len(started) == 3
        # A second crash in a row waits twice as long; staying up a while resets the count.
        broker.process.kill()
        broker.process.wait()
        broker.check(now + 2)
        assert broker.restart_at == now + 4 and broker.failures == 2
        broker.check(now + 4)
        broker.check(broker.started_at + STABLE_S)
        assert broker.failures == 0 and len(started) == 4
    finally:
        for process in started:
            process.kill()
            process.wait()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "make-stop"])
def test_ctrl_c_and_make_stop_end_the_demo_the_same_way(sig):
    """Ctrl-C and `vdi demo --stop` (SIGTERM) set the one stop event the demo waits on; the end-to-end test
    (tests/e2e/test_demo_command.py) follows that way out to everything being stopped."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        stop = stop_on_signals()
        assert not stop.is_set()
        os.kill(os.getpid(), sig)
        assert stop.wait(5)
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
