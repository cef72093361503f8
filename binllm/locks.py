"""Output locks: one binllm process at a time writes an output folder or file.

Every stage that writes an output (prepare, pretrain, tune, score, recommend,
run) holds :func:`hold` on it for the whole stage. A second process asking for
the same output is refused at once with :class:`OutputLockedError`, one line
naming the output and the holder's pid; it never waits and never mixes its
files with the first one's.

The lock is an ``flock`` (``msvcrt.locking`` on Windows) on a hidden file
beside the output, ``.<name>.binllm-lock``, holding the holder's pid. Beside,
not inside: a prepared folder is swapped in whole by
:func:`binllm._io.replace_dir`, which would move a lock file inside it away
from under its holder. The operating system drops the lock when its process
ends, however it ends (``kill -9`` included), so a stale lock never blocks a
rerun (a killed holder's file stays until the next holder takes and removes it).
The holder removes the file when it is done, while still holding the lock; a
process that locked a file just unlinked that way sees that the path no longer
names its file and tries again, so two processes never hold two different files.

A process may take the lock of an output it already holds (``run`` holds its
folder while its stages lock their own outputs inside it; the command line
holds a stage's output while the stage takes it again): the lock is counted and
released when the outermost holder exits. Under ``torchrun`` only rank 0 locks:
the ranks of one job work on the same outputs together, and when rank 0 of a
second job is refused, torchrun stops that job's other ranks.

:func:`wait_for` is the blocking variant, for work that every process needs
done once (converting the embedded model into the cache): the others wait for
the first and then find its result.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ParamSpec, TypeVar

_P = ParamSpec("_P")
_R = TypeVar("_R")

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

LOCK_SUFFIX = ".binllm-lock"

_held: dict[str, tuple[int, int]] = {}  # lock file -> (fd, depth) for the locks this process holds
_held_guard = threading.Lock()


class OutputLockedError(OSError):
    """Another process holds the lock of this output; the message names the output and its pid."""


def lock_path(output: str | os.PathLike) -> Path:
    """The lock file of `output` (a folder or a file): ``.<name>.binllm-lock`` beside it."""
    p = Path(os.path.abspath(output))
    return p.with_name(f".{p.name}{LOCK_SUFFIX}")


def _lock(fd: int, block: bool) -> bool:
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        except (BlockingIOError, PermissionError):
            return False
        return True
    import msvcrt  # pragma: no cover - Windows

    while True:  # pragma: no cover - Windows
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            if not block:
                return False
            import time

            time.sleep(0.2)


def _open_locked(path: Path, block: bool) -> int | None:
    """An fd of `path` holding its lock, or None when another process holds it (`block` False)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        if not _lock(fd, block):
            os.close(fd)
            return None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:  # the last holder removed it after this process opened it
            same = False
        if same:
            return fd
        _unlock(fd)


def _release(path: Path, fd: int) -> None:
    """Removes the lock file (while still locked, see the module docstring) and unlocks."""
    with contextlib.suppress(OSError):  # gone already; or Windows, which cannot remove an open file
        os.unlink(path)
    _unlock(fd)


def _unlock(fd: int) -> None:
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        else:  # pragma: no cover - Windows
            import msvcrt

            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    finally:
        os.close(fd)


def _holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"


def _is_secondary_rank() -> bool:
    return int(os.environ.get("RANK", "0") or 0) != 0 and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


@contextlib.contextmanager
def hold(output: str | os.PathLike) -> Iterator[Path]:
    """Holds the lock of `output` for the block; yields the lock file's path.

    Args:
        output: the output folder or file (it need not exist yet; its parent folder is created).
    Raises:
        OutputLockedError: another process holds it.
    """
    path = lock_path(output)
    key = str(path)
    if _is_secondary_rank():
        yield path
        return
    with _held_guard:
        if key in _held:
            fd, depth = _held[key]
            _held[key] = (fd, depth + 1)
            owned = False
        else:
            owned = True
    if owned:
        got = _open_locked(path, block=False)
        if got is None:
            shown = Path(output)
            raise OutputLockedError(
                f"{shown} is in use by another binllm process (pid {_holder(path)}); wait for it to end, or use "
                "another output path")
        fd = got
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        with _held_guard:
            _held[key] = (fd, 1)
    try:
        yield path
    finally:
        with _held_guard:
            fd, depth = _held[key]
            if depth > 1:
                _held[key] = (fd, depth - 1)
            else:
                del _held[key]
                _release(path, fd)


def holding(arg: str) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Decorator: each call of the function holds :func:`hold` on its argument `arg` (the output
    path) from start to end. Binding the arguments first, so a call missing them is the usual TypeError."""

    def wrap(fn: Callable[_P, _R]) -> Callable[_P, _R]:
        sig = inspect.signature(fn)
        if arg not in sig.parameters:
            raise TypeError(f"{fn.__name__} has no argument {arg!r} to lock")

        @functools.wraps(fn)
        def call(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            output = sig.bind(*args, **kwargs).arguments[arg]
            with hold(output):
                return fn(*args, **kwargs)

        return call

    return wrap


@contextlib.contextmanager
def wait_for(output: str | os.PathLike) -> Iterator[Path]:
    """Holds the lock of `output` for the block, waiting while another process holds it.

    Every process locks, torchrun ranks included (they are the ones that race here). Not
    reentrant: a process must not nest two waits on one output."""
    path = lock_path(output)
    fd = _open_locked(path, block=True)
    assert fd is not None  # a blocking lock always comes
    try:
        yield path
    finally:
        _release(path, fd)
