"""Progress output for long stages: the ``binllm`` logger, a bar in a terminal, sparse lines in a log.

Progress lines go through the stdlib logger ``binllm`` (``[binllm HH:MM:SS] message`` on stderr),
so stdout carries only results (tables, the final line of a command) and a library user controls
the lines like any other library's: ``logging.getLogger("binllm").setLevel(logging.WARNING)``
silences them; the command line does that for ``--quiet``. Unless the application configured
the logger itself, binllm gives it its own stderr handler (as transformers does for its logger).

A terminal gets a tqdm bar; a non-terminal (a log file, CI, ``nohup``) gets one
line per ``every`` share of the work (10% by default) and a closing line, so a
log is never silent for minutes and never flooded by carriage-return bars.
"""
from __future__ import annotations

import logging
import sys
import time
from types import TracebackType
from typing import TextIO

LOGGER_NAME = "binllm"
LOG_FORMAT = "[binllm %(asctime)s] %(message)s"


class _StderrHandler(logging.Handler):
    """Writes to the ``sys.stderr`` of the moment: pytest, notebooks and callers that redirect swap
    it after binllm was imported, and a StreamHandler would keep writing to the old one."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging's own policy: report, never raise from a log call
            self.handleError(record)


def logger() -> logging.Logger:
    """The ``binllm`` logger, with binllm's stderr handler (level INFO) unless the application set one."""
    lg = logging.getLogger(LOGGER_NAME)
    if not lg.handlers and not getattr(lg, "_binllm_configured", False):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT, "%H:%M:%S"))
        lg.addHandler(handler)
        if lg.level == logging.NOTSET:
            lg.setLevel(logging.INFO)
        lg.propagate = False
        lg._binllm_configured = True  # type: ignore[attr-defined]  # once: an application may remove it
    return lg


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether progress goes to an interactive terminal (stderr by default)."""
    s = stream if stream is not None else sys.stderr
    try:
        return bool(s.isatty())
    except (AttributeError, ValueError):
        return False


def log(msg: str) -> None:
    """One progress line (level INFO) through the ``binllm`` logger: timestamped, on stderr, flushed."""
    logger().info(msg)


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
