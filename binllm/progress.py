"""Progress output for long stages: a bar in a terminal, sparse lines in a log.

A terminal gets a tqdm bar; a non-terminal (a log file, CI, ``nohup``) gets one
line per ``every`` share of the work (10% by default) and a closing line, so a
log is never silent for minutes and never flooded by carriage-return bars.
"""
from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether progress goes to an interactive terminal (stderr by default)."""
    s = stream if stream is not None else sys.stderr
    try:
        return bool(s.isatty())
    except (AttributeError, ValueError):
        return False


def log(msg: str, prefix: str = "binllm") -> None:
    """One timestamped line on stdout (flushed: logs of long runs stay current)."""
    print(f"[{prefix} {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Progress:
    """Counts work units of one task.

    Args:
        total: units of work (prompts, rows, steps).
        desc: what is being done, shown on every line.
        enabled: False silences it entirely.
        every: in a log, one line per this share of `total`.
    """

    def __init__(self, total: int, desc: str, enabled: bool = True, every: float = 0.1):
        self.total, self.desc, self.enabled = max(int(total), 0), desc, enabled
        self.done = 0
        self._t0 = time.perf_counter()
        self._bar = None
        self._next_line = every
        self._every = every
        if enabled and is_terminal():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=desc, leave=False)

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        if self.total and self.done / self.total >= self._next_line and self.done < self.total:
            rate = self.done / max(time.perf_counter() - self._t0, 1e-9)
            log(f"{self.desc}: {self.done}/{self.total} ({100 * self.done / self.total:.0f}%, {rate:.2f}/s)")
            while self._next_line <= self.done / self.total:
                self._next_line += self._every

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.enabled and self.total:
            dt = time.perf_counter() - self._t0
            log(f"{self.desc}: {self.done}/{self.total} in {dt:.1f}s ({self.done / max(dt, 1e-9):.2f}/s)")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
