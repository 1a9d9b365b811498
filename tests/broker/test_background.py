"""Periodic background tasks (broker/background.py): a stop always ends the task, even when it comes at the
moment something kicks it (a lease keeper taking the job's lease as the broker stops)."""

from __future__ import annotations

import asyncio

from broker.background import PeriodicTask


class CountingTask(PeriodicTask):
    name = "counting"

    def __init__(self) -> None:
        super().__init__(interval_s=60.0)
        self.passes = 0

    async def run_once(self) -> None:
        self.passes += 1


def test_a_kick_at_the_moment_of_stop_does_not_keep_the_task_alive():
    async def scenario() -> list[int]:
        passes = []
        for spin in range(200):
            task = CountingTask()
            task.start()
            for _ in range(spin % 4):
                await asyncio.sleep(0)
            task.kick()
            await asyncio.sleep(0)
            task.kick()
            await asyncio.wait_for(task.stop(), 5)  # before the fix, some never ended
            assert task._task.done()
            passes.append(task.passes)
        return passes

    passes = asyncio.run(scenario())
    assert len(passes) == 200 and min(passes) >= 1  # each ran its first pass, then stopped
