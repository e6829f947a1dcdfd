"""Bad input to a benchmark script ends as it does in the convnext CLI: one line on stderr, exit status 2.
A runtime failure (a run that crashed) stays exit status 1.

    raise UsageExit("the runs held out other images")   # anywhere below main
    sys.exit(run_main(main))                             # at the bottom of the script
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable


class UsageExit(SystemExit):
    """Bad input. ``str()`` is the one-line message (what ``pytest.raises(..., match=)`` reads); the exit status
    is 2. ``run_main`` prints it; uncaught elsewhere it still exits 2, silently."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def run_main(main: Callable[[], object]) -> object:
    """Run a script's ``main`` and return what it returns: bad input becomes ``SCRIPT: error: MESSAGE`` on stderr
    and exit status 2."""
    try:
        return main()
    except UsageExit as exc:
        print(f"{Path(sys.argv[0]).name}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
