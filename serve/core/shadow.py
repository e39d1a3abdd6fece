"""Shadow traffic: copy a sample of a model's requests to another version, compare the answers.

The copy leaves after the primary request is dispatched, runs in a task of its own, and never
delays or fails the primary: the caller gets the primary's answer whatever the shadow does. A cap
bounds the copies in flight; past it a copy is dropped and counted, never queued.
"""

from __future__ import annotations

import asyncio
import logging
import logging.handlers
import random
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field

from serve.core.errors import OverloadedError
from serve.core.types import Feeds, InferRequest
from serve.core.validation import validate
from serve.observe.metrics import GatewayMetrics

LABEL, SCORES = "label", ("probabilities", "variable")


class ShadowConfig(BaseModel):
    """Per model, in the Router's user_config: `models.<name>.shadow`."""

    model_config = ConfigDict(extra="forbid")

    version: str = Field(description="The shadow: a deployed version or an alias.")
    ratio: float = Field(ge=0, le=1, description="Share of requests copied to the shadow.")
    max_in_flight: int = Field(
        256, ge=1, description="Copies queued or running; past it, drop and count."
    )
    log_path: str | None = Field(None, description="JSONL file for disagreements (rotated).")
    log_sample: float = Field(1.0, ge=0, le=1, description="Share of disagreements logged.")
    log_max_bytes: int = Field(10 << 20, ge=1024, description="Rotate the log past this size.")
    log_backups: int = Field(3, ge=0, description="Rotated log files kept.")
    diff_threshold: float = Field(
        1e-4, ge=0, description="Max abs difference above which answers disagree (for the log)."
    )


@dataclass
class Comparison:
    rows: int
    agree: int | None  # rows whose labels agree; None if neither answer has labels
    max_abs_diff: float | None

    @property
    def disagrees(self) -> bool:
        return self.agree is not None and self.agree < self.rows


def compare(primary: Feeds, shadow: Feeds) -> Comparison:
    rows = len(next(iter(primary.values())))
    agree = None
    a_label, b_label = primary.get(LABEL), shadow.get(LABEL)
    if a_label is not None and b_label is not None and a_label.shape == b_label.shape:
        if a_label.dtype == object or b_label.dtype == object:  # string classes
            a_label, b_label = a_label.astype(str), b_label.astype(str)
        agree = int(np.count_nonzero(a_label == b_label))
    diff = None
    for name in SCORES:
        a, b = primary.get(name), shadow.get(name)
        if a is not None and b is not None and a.shape == b.shape:
            diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
    return Comparison(rows, agree, diff)


@dataclass
class _Copy:
    request: InferRequest
    feeds: Feeds | None  # the primary's validated feeds, when the signatures match
    series: _Series
    answer: asyncio.Future[Feeds]
    started: float


class ShadowRunner:
    """One model's shadow: picks the requests to copy, runs the copies in batches, compares.

    Copies queue in a list owned by one worker task; each round takes every queued copy, runs
    them as one batch on the shadow version, and compares each with its primary's answer. The
    caller's cost per copy is a sample draw and a list append.
    """

    def __init__(
        self,
        model: str,
        target: Any,
        config: ShadowConfig,
        metrics: GatewayMetrics,
        rand: Any = random.random,
    ) -> None:
        self.model = model
        self.target = target  # serve.core.dataplane.VersionTarget
        self.config = config
        self.metrics = metrics
        self._rand = rand
        self._pending: list[_Copy] = []
        self._in_flight = 0  # copies queued or running
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._log = _disagreement_log(config) if config.log_path else None
        self._series: dict[str, _Series] = {}
        self._same_inputs: dict[str, bool] = {}
        self._closed = False

    @property
    def busy(self) -> bool:
        return self._in_flight > 0

    def maybe_copy(
        self, request: InferRequest, primary: Any, feeds: Feeds, answer: asyncio.Future[Feeds]
    ) -> None:
        if self._closed or primary.version == self.target.version:
            return
        if self._rand() >= self.config.ratio:
            return
        series = self._metrics_for(primary.version)
        if self._in_flight >= self.config.max_in_flight or not self.target.health.ready:
            series.dropped.inc()  # at its cap, or the shadow version has no replica running
            return
        same = self._same_inputs.get(primary.version)
        if same is None:
            same = primary.manifest.signature.inputs == self.target.manifest.signature.inputs
            self._same_inputs[primary.version] = same
        self._pending.append(
            _Copy(request, feeds if same else None, series, answer, time.monotonic())
        )
        self._in_flight += 1
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        self._wakeup.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.ensure_future(self._loop())

    def _metrics_for(self, primary_version: str) -> _Series:
        series = self._series.get(primary_version)
        if series is None:
            series = _Series(self.metrics, (self.model, primary_version, self.target.version))
            self._series[primary_version] = series
        return series

    async def _loop(self) -> None:
        assert self._wakeup is not None
        while True:
            while not self._pending:
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            batch, self._pending = self._pending, []
            try:
                await self._run_batch(batch)
            except Exception:  # a bug here must not stop the shadow for good
                for copy in batch:
                    copy.series.error.inc()
            finally:
                self._in_flight -= len(batch)

    async def _run_batch(self, batch: list[_Copy]) -> None:
        ready: list[tuple[_Copy, Feeds]] = []
        for copy in batch:
            try:
                feeds = (
                    copy.feeds
                    or validate(
                        copy.request, self.target.manifest.signature, self.target.allow_non_finite
                    )[0]
                )
            except Exception:
                copy.series.error.inc()
                continue
            ready.append((copy, feeds))
        for group in _groups(ready):
            await self._run_group(group)

    async def _run_group(self, group: list[tuple[_Copy, Feeds]]) -> None:
        names = list(group[0][1])
        sizes = [len(f[names[0]]) for _, f in group]
        feeds = {n: np.concatenate([f[n] for _, f in group]) for n in names}
        try:
            answers = await self.target.batcher.submit(feeds, sum(sizes))
        except OverloadedError:
            for copy, _ in group:
                copy.series.dropped.inc()
            return
        except Exception:
            for copy, _ in group:
                copy.series.error.inc()
            return
        done = time.monotonic()
        cuts = np.cumsum(sizes)[:-1]
        split = {n: np.split(v, cuts) for n, v in answers.items()}
        expected = await asyncio.gather(
            *(asyncio.shield(c.answer) for c, _ in group), return_exceptions=True
        )
        for i, ((copy, _), primary) in enumerate(zip(group, expected, strict=True)):
            copy.series.duration.observe(done - copy.started)
            if isinstance(primary, BaseException):
                copy.series.primary_failed.inc()
                continue
            shadow = {n: parts[i] for n, parts in split.items()}
            self._record(copy.series, compare(primary, shadow), copy.request, primary, shadow)

    def _record(
        self,
        series: _Series,
        result: Comparison,
        request: InferRequest,
        primary: Feeds,
        shadow: Feeds,
    ) -> None:
        series.compared.inc()
        if result.agree is not None:
            series.rows_agree.inc(result.agree)
            series.rows_disagree.inc(result.rows - result.agree)
        if result.max_abs_diff is not None:
            series.max_abs_diff.observe(result.max_abs_diff)
        differs = result.disagrees or (result.max_abs_diff or 0.0) > self.config.diff_threshold
        if self._log is not None and differs and self._rand() < self.config.log_sample:
            self._log.info(_log_line(series.labels, request, primary, shadow, result))

    def close(self) -> None:
        """Take no more copies; the worker finishes what it holds, then ends."""
        self._closed = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._log is not None:
            for handler in list(self._log.handlers):
                handler.close()
                self._log.removeHandler(handler)


def _groups(ready: list[tuple[_Copy, Feeds]]) -> list[list[tuple[_Copy, Feeds]]]:
    """Copies whose tensors can be concatenated (same names, trailing shapes, dtypes)."""
    groups: dict[tuple[Any, ...], list[tuple[_Copy, Feeds]]] = {}
    for copy, feeds in ready:
        key = tuple((n, v.shape[1:], v.dtype.str) for n, v in feeds.items())
        groups.setdefault(key, []).append((copy, feeds))
    return list(groups.values())


class _Series:
    """One (model, primary, shadow) triple's metric children, looked up once."""

    def __init__(self, metrics: GatewayMetrics, labels: tuple[str, str, str]) -> None:
        self.labels = labels
        outcome = metrics.shadow_requests
        self.compared = outcome.labels(*labels, "compared")
        self.dropped = outcome.labels(*labels, "dropped")
        self.error = outcome.labels(*labels, "error")
        self.primary_failed = outcome.labels(*labels, "primary_failed")
        self.rows_agree = metrics.shadow_rows.labels(*labels, "true")
        self.rows_disagree = metrics.shadow_rows.labels(*labels, "false")
        self.max_abs_diff = metrics.shadow_max_abs_diff.labels(*labels)
        self.duration = metrics.shadow_duration.labels(*labels)


def _disagreement_log(config: ShadowConfig) -> logging.Logger:
    assert config.log_path is not None
    logger = logging.getLogger(f"modelgate.shadow.{config.log_path}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    if not logger.handlers:
        handler = logging.handlers.RotatingFileHandler(
            config.log_path, maxBytes=config.log_max_bytes, backupCount=config.log_backups
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    return logger


def _log_line(
    labels: tuple[str, str, str],
    request: InferRequest,
    primary: Feeds,
    shadow: Feeds,
    result: Comparison,
) -> str:
    model, primary_version, shadow_version = labels
    doc = {
        "ts": time.time(),
        "model": model,
        "primary": primary_version,
        "shadow": shadow_version,
        "id": request.id,
        "rows": result.rows,
        "labels_agree": result.agree,
        "max_abs_diff": result.max_abs_diff,
        "inputs": {t.name: _plain(t.array) for t in request.inputs},
        "primary_outputs": {k: _plain(v) for k, v in primary.items()},
        "shadow_outputs": {k: _plain(v) for k, v in shadow.items()},
    }
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _plain(array: np.ndarray) -> Any:
    if array.dtype == object:
        return [
            v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            for v in array.reshape(-1)
        ]
    return np.ascontiguousarray(array)
