"""Following a registry alias: which version the gateway serves as `models:/<m>@<alias>`, and
which versions it refused, kept in Ray's KV (any object with get/publish: the KV directory of
serve/ray/internals.py) so that every rebuild of the application and the delivery controller
agree on it.

    the alias moves in the registry   ─► the controller has the application rebuilt
    build (serve/control/resolve.py)  ─► the serving version, and the registry's as candidate
    delivery promoted                 ─► serving := candidate
    delivery failed or aborted        ─► the candidate refused; the registry's alias put back

A version is refused once (conversion failed, or its delivery failed) and not tried again
unless the alias moves to another version and back. The state is per registry, model and alias:
two applications following the same alias serve the same version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field

from converters.registry import ModelRef, Registry

logger = logging.getLogger("modelgate.delivery")


class FollowState(BaseModel):
    serving: str = Field(description="The version the gateway serves as the alias.")
    refused: dict[str, str] = Field(
        default_factory=dict, description="version -> why it is not served (never retried)"
    )


class FollowStore:
    def __init__(self, kv: Any) -> None:
        self.kv = kv

    @staticmethod
    def key(registry: str, model: str, alias: str) -> str:
        where = hashlib.sha256(registry.encode()).hexdigest()[:12]
        return f"follow/{where}/{model}@{alias}"

    def get(self, registry: str, model: str, alias: str) -> FollowState | None:
        text = self.kv.get(self.key(registry, model, alias))
        return None if not text else FollowState.model_validate(json.loads(text))

    def put(self, registry: str, model: str, alias: str, state: FollowState) -> None:
        self.kv.publish(self.key(registry, model, alias), state.model_dump_json())


#: Seconds between reads of the followed aliases in the registry.
FOLLOW_S = 5.0
#: Seconds a rebuild has to deploy a moved alias's version before it is asked for again.
REBUILD_S = 120.0


class Follower:
    """The delivery controller's eye on the registry: it asks for a rebuild when a followed
    alias moves, and moves the alias (in the state, and back in the registry) when a delivery
    ends. `registry`: opens a registry by location; `rebuild`: has the application rebuilt."""

    def __init__(
        self,
        state: FollowStore,
        registry: Callable[[str], Registry],
        rebuild: Callable[[str], None],
    ) -> None:
        self.state, self.registry, self.rebuild = state, registry, rebuild
        self._read_at = -math.inf
        self._asked: dict[tuple[str, str], float] = {}

    def watch(
        self, follows: Callable[[], dict[str, Any]], now: float
    ) -> list[tuple[str, str, str]]:
        """(model, outcome, reason) for each followed alias that moved since the build;
        `follows` (read every FOLLOW_S): the models that follow one, as the routers built them."""
        if now - self._read_at < FOLLOW_S:
            return []
        self._read_at = now
        notes = []
        for model, f in follows().items():
            alias, location = f["alias"], f["registry"]
            try:
                current = self.registry(location).resolve(ModelRef(model, alias=alias)).version
            except Exception:
                logger.warning("%s@%s: the registry did not answer", model, alias, exc_info=True)
                continue
            state = self.state.get(location, model, alias)
            if state is None or current in (state.serving, f.get("candidate")):
                continue
            if current in state.refused:
                continue
            asked = self._asked.get((model, current))
            if asked is not None and now - asked < REBUILD_S:
                continue
            self._asked[(model, current)] = now
            self.rebuild(f"{model}@{alias}:{current}")
            notes.append(
                (
                    model,
                    "alias_moved",
                    f"{alias} moved to v{current} in the registry (v{state.serving} serving): "
                    "rebuilding the application to deliver it",
                )
            )
        return notes

    def ended(
        self, model: str, follow: dict[str, Any], phase: str, stable: str, candidate: str
    ) -> str:
        """A delivery of a followed alias ended: promoted, the candidate serves as the alias;
        failed or aborted, it is refused and the registry's alias put back where it was."""
        location, alias = follow["registry"], follow["alias"]
        state = self.state.get(location, model, alias) or FollowState(serving=stable)
        if phase == "promoted":
            state.serving = candidate
            self.state.put(location, model, alias, state)
            return f"v{candidate} serves as {alias}"
        state.refused[candidate] = f"its delivery {phase}"
        self.state.put(location, model, alias, state)
        registry = self.registry(location)
        current = registry.resolve(ModelRef(model, alias=alias)).version
        if current != candidate:
            return f"v{candidate} {phase}; the registry's {alias} names v{current}: left as it is"
        registry.set_alias(model, alias, stable)
        return f"{alias} put back to v{stable} in the registry (v{candidate} {phase})"

    def write_back(self, model: str, desired: dict[str, Any], candidate: str) -> str:
        """A promotion, written to the registry: the stable alias names the candidate."""
        alias, location = desired.get("stable_alias"), desired.get("registry")
        source = desired.get("sources", {}).get(candidate, "")
        if not alias or not location or not source.startswith("models:/"):
            return "not written back: the stable version is not a registry alias"
        ref = ModelRef.parse(source)
        assert ref.version is not None
        self.registry(location).set_alias(ref.name, alias, ref.version)
        return f"{alias} moved to v{ref.version} in the registry"
