"""JSON values under one prefix of Ray's KV: what the control loops keep there
(serve/control/delivery.py, serve/control/catalog.py)."""

from __future__ import annotations

import json
from typing import Any


class KVStore:
    """`kv`: serve/ray/internals.KVDirectory, or any object with get/publish/listing/remove."""

    def __init__(self, prefix: str, kv: Any) -> None:
        self.prefix = prefix
        self.kv = kv

    def _read(self, name: str) -> Any:
        text = self.kv.get(self.prefix + name)
        return json.loads(text) if text else {}

    def _write(self, name: str, value: Any) -> None:
        self.kv.publish(self.prefix + name, json.dumps(value, sort_keys=True))

    def clear(self) -> None:
        for key in self.kv.listing(self.prefix):
            self.kv.remove(key)
