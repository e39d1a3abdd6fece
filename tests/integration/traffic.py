"""Traffic from the load-test harness, for tests that watch the gateway act under load."""

from __future__ import annotations

import threading
from collections import Counter

from loadtests import runner
from loadtests.clients import Target
from loadtests.engine import Step
from tests.integration.conftest import Gateway


class Traffic:
    """The harness's open-loop load on one model, in 3-second steps until stopped; every
    outcome counted."""

    def __init__(self, gateway: Gateway, prefix: str, model: str, rate: float = 150) -> None:
        self.target = Target(url=f"{gateway.base}{prefix}", model=model)
        self.payloads = runner.load_payloads(self.target)
        self.rate = rate
        self.outcomes: Counter[str] = Counter()
        #: The first answer of each failed outcome: `traffic.outcomes` assertions show it.
        self.answers: dict[str, str] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)

    def _run(self) -> None:
        step = Step(mode="open", rate=self.rate, concurrency=64, duration_s=3, warmup_s=0)
        while not self.stop.is_set():
            result = runner.run(self.target, self.payloads, step)
            self.outcomes.update(result.outcomes)
            self.answers = result.answers | self.answers

    def failures(self) -> str:
        """The outcomes, with the first answer of each failed one."""
        return f"{dict(self.outcomes)}; first answers: {self.answers}"
