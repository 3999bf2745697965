"""Progress reporting for long work: library code reports, the CLI displays."""

from __future__ import annotations

import sys
import time
from typing import Protocol, TextIO

__all__ = ["Progress", "NullProgress", "StderrProgress"]


class Progress(Protocol):
    """Receives ``(step, done, total)``; ``done``/``total`` may be ``None`` for a plain step."""

    def __call__(self, step: str, done: int | None = None, total: int | None = None) -> None: ...


class NullProgress:
    """Discards progress (the default in library calls)."""

    def __call__(self, step: str, done: int | None = None, total: int | None = None) -> None:
        return None


class StderrProgress:
    """One line per step on stderr, with elapsed seconds, for the command line."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._start = time.perf_counter()

    def __call__(self, step: str, done: int | None = None, total: int | None = None) -> None:
        elapsed = time.perf_counter() - self._start
        counter = f" [{done}/{total}]" if done is not None and total is not None else ""
        print(f"[{elapsed:7.1f}s] {step}{counter}", file=self._stream, flush=True)
