"""The `modelgate` command line: arguments (parsing), commands (commands), and the supervisor
that keeps a local gateway up (supervisor). `modelgate` is `serve.cli:main`."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pydantic import ValidationError

from converters.errors import ModelgateError


def main(argv: Sequence[str] | None = None) -> int:
    from serve.cli.parsing import build_parser

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ModelgateError, ValidationError) as exc:
        print(f"modelgate: error: {exc}", file=sys.stderr)
        return 2
