"""The periodic tasks that act on the pools' desktops through DesktopService: the pool manager, the session
lifecycle, the power manager and the rollout manager (broker/background.py runs them)."""

from __future__ import annotations

from typing import ClassVar

from broker.background import PeriodicTask
from broker.config import BrokerConfig
from broker.db import Database
from broker.desktops import DesktopService


class PoolTask(PeriodicTask):
    """A pass every `pass_interval_s` (each task's own) over the configured pools and their desktops.

    A subclass with state of its own extends `__init__(*args, **kwargs)` and sets it after `super()`.
    """

    pass_interval_s: ClassVar[float]

    def __init__(
        self,
        config: BrokerConfig,
        db: Database,
        desktops: DesktopService,
        interval_s: float | None = None,
    ) -> None:
        super().__init__(self.pass_interval_s if interval_s is None else interval_s)
        self.config = config
        self.db = db
        self.desktops = desktops
