"""`python -m serve.cli`: the `modelgate` command (the supervisor starts its child this way)."""

import sys

from serve.cli import main

sys.exit(main())
