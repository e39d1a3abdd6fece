"""A REST route: one row of the table (serve/protocol/rest.py: ROUTES) that drives dispatch, the
access level it needs, the 405's `Allow` header and its operation in the OpenAPI document.

Paths are written once, as templates: `{name}` is one path segment, passed to the handler by
name; `[...]` is optional. `/v2/models/{model}[/versions/{version}]/infer` matches both forms
and is documented as both."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from serve.core.auth import Access

_PART = re.compile(r"\[([^\]]*)\]|\{(\w+)\}|([^\[{]+)")


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # the template
    handler: Callable[..., Any]
    access: Access
    summary: str
    ok: dict[str, Any]  # the OpenAPI 200 response
    request_body: dict[str, Any] | None = None
    headers: tuple[dict[str, Any], ...] = ()  # OpenAPI header parameters
    also: dict[str, dict[str, Any]] = field(default_factory=dict)  # other answers, by status
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", re.compile(_regex(self.path)))

    def documented_paths(self) -> Iterator[str]:
        """Every concrete path of the template: each optional part with and without, except a
        lone optional trailing slash, documented without."""
        parts = _parts(self.path)
        optional = [i for i, (kind, _) in enumerate(parts) if kind == "opt" and parts[i][1] != "/"]
        for chosen in itertools.product((True, False), repeat=len(optional)):
            keep = dict(zip(optional, chosen, strict=True))
            out = []
            for i, (kind, text) in enumerate(parts):
                if kind != "opt" or keep.get(i, False):
                    out.append(text)
            yield "".join(out)


def _parts(template: str) -> list[tuple[str, str]]:
    out = []
    for optional, name, literal in _PART.findall(template):
        if optional:
            out.append(("opt", optional))
        elif name:
            out.append(("param", "{" + name + "}"))
        else:
            out.append(("lit", literal))
    return out


def _segment(text: str) -> str:
    out = []
    for _, name, literal in _PART.findall(text):
        out.append(f"(?P<{name}>[^/]+)" if name else re.escape(literal))
    return "".join(out)


def _regex(template: str) -> str:
    out = []
    for optional, name, literal in _PART.findall(template):
        if optional:
            out.append(f"(?:{_segment(optional)})?")
        elif name:
            out.append(f"(?P<{name}>[^/]+)")
        else:
            out.append(re.escape(literal))
    return "".join(out)
