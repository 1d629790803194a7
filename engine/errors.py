"""The one error type the engine shows to people, and how a command line shows it."""

from __future__ import annotations

import sys
from typing import Callable


class EngineError(ValueError):
    """Bad input or an unavailable resource; its message is one sentence that says what to change."""


def one_sentence(command: Callable[[], int]) -> int:
    """Run a command; its EngineError is one sentence on stderr and exit status 2, an interrupt status 130."""
    try:
        return command()
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted.", file=sys.stderr)
        return 130
