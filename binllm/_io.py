"""Atomic writes: the one place that turns "write an output" into "the old
output or the complete new one, never half of either".

Every binllm output goes through here. A file is written to a temporary
sibling in the same folder, flushed to disk (fsync) and renamed over the
destination with :func:`os.replace`; a folder is built in a temporary sibling
folder and swapped in by :func:`replace_dir`. On any failure the temporary
path is removed and the old output stays as it was.

Temporary names are recognisable as ours and carry the writer's pid,
``.<name>.binllm-tmp.<pid>.<token>[<suffix>]`` (and ``.binllm-old.`` for a
folder moved aside during a swap), so :func:`clean_stale_temps` can remove the
leftovers of a killed writer without touching a live one's.

Permissions follow the umask, as for any file the user creates: no
``mkdtemp`` (0700) or ``mkstemp`` (0600) modes.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

# Name of the marker file inside every binllm output folder: {"kind": ...}.
OUTPUT_MARKER = ".binllm-output.json"
_TAGS = ("tmp", "old")


def _temp_sibling(dest: Path, tag: str = "tmp", keep_suffix: bool = True) -> Path:
    """A fresh name next to `dest`; a file's suffix is kept last because some
    writers (matplotlib, pandas) choose their format by it."""
    suffix = dest.suffix if keep_suffix else ""
    return dest.with_name(f".{dest.name}.binllm-{tag}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not every platform can open a folder.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def atomic_save(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Calls ``writer(tmp)`` to write a temporary file beside `path`, then fsyncs
    it and renames it over `path`. The temporary file is removed on any failure
    (including KeyboardInterrupt); `path` is then unchanged.

    Raises:
        ValueError: `path` is an existing folder, or the writer wrote nothing.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; a file path was expected")
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent, path.name)
    tmp = _temp_sibling(path)
    try:
        writer(tmp)
        if not tmp.is_file():
            raise ValueError(f"writing {path}: the writer did not create a file at {tmp}")
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Writes `data` to `path` atomically (see :func:`atomic_save`)."""

    def write(tmp: Path) -> None:
        # O_EXCL: never follow or reuse an existing name; mode 0o666 & ~umask.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)

    return atomic_save(path, write)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Writes `text` to `path` atomically."""
    return atomic_write_bytes(path, text.encode(encoding))


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 4 MiB blocks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def strict_json(obj: object) -> object:
    """`obj` with NaN and infinities as None and numpy values as Python ones, for strict JSON.

    Python's json writes ``NaN``, which JavaScript's ``JSON.parse`` and other strict parsers refuse;
    an undefined metric (one class in a sample) is ``null`` instead. Other objects go through float()."""
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return strict_json(obj.tolist())
    if obj is None or isinstance(obj, (str, bool)):
        return obj
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    v = float(obj)  # type: ignore[arg-type]  # numpy floats and other numbers; anything else is a TypeError
    return v if math.isfinite(v) else None


def atomic_write_json(path: str | os.PathLike, obj: object) -> Path:
    """Writes `obj` as strict JSON (indent 1; NaN/inf as null, see :func:`strict_json`) atomically."""
    return atomic_write_text(path, json.dumps(strict_json(obj), indent=1, allow_nan=False) + "\n")


def replace_dir(tmp_dir: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Swaps the finished folder `tmp_dir` in as `dest`.

    An existing `dest` folder is first renamed to a ``.binllm-old.`` sibling and
    deleted after the swap; if the process dies in between,
    :func:`clean_stale_temps` puts it back. `tmp_dir` must be in the same
    folder as `dest` (a rename never copies).

    Raises:
        ValueError: `dest` exists and is not a folder.
    """
    tmp_dir, dest = Path(tmp_dir), Path(dest)
    if dest.exists() and (dest.is_symlink() or not dest.is_dir()):
        raise ValueError(f"{dest} exists and is not a folder; refusing to replace it")
    for root, _, files in os.walk(tmp_dir):
        for f in files:
            _fsync_file(Path(root) / f)
    old = None
    if dest.exists():
        old = _temp_sibling(dest, "old", keep_suffix=False)
        os.replace(dest, old)
    try:
        os.replace(tmp_dir, dest)
    except BaseException:
        if old is not None:
            os.replace(old, dest)
        raise
    _fsync_dir(dest.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dest


def _folder_kind(path: Path) -> str | None:
    try:
        return str(json.loads((path / OUTPUT_MARKER).read_text())["kind"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_output_path(path: str | os.PathLike, kind: str,
                      recognise: Callable[[Path], bool] | None = None) -> Path:
    """Refuses to let an output replace something that is not a binllm output.

    Args:
        path: the output path.
        kind: ``"file"`` for a single-file output; any other name is a folder
            kind (``"prepared"``, ``"hash"``, ...), matched against the marker
            file that :func:`atomic_dir` writes into its folders.
        recognise: for folder kinds, accepts folders written before the marker
            existed (for example: "has meta.json and rows.parquet").

    A missing path and an empty folder are always accepted; for ``"file"`` an
    existing regular file is accepted.

    Raises:
        ValueError: naming `path` and what it is.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return path
    if kind == "file":
        if path.is_dir():
            raise ValueError(f"output {path} is an existing folder; a file path was expected")
        if not path.is_file():
            raise ValueError(f"output {path} exists and is not a regular file")
        return path
    if path.is_symlink() or not path.is_dir():
        raise ValueError(f"output {path} exists and is not a folder; refusing to replace it with a {kind} folder "
                         "(choose another path or remove it)")
    if not any(path.iterdir()) or _folder_kind(path) == kind or (recognise is not None and recognise(path)):
        return path
    raise ValueError(f"output {path} is an existing folder that is not a binllm {kind} output; refusing to "
                     "replace it (choose another path or remove it)")


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike, kind: str | None = None,
               recognise: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Builds a folder atomically::

        with atomic_dir("runs/data", kind="prepared") as tmp:
            (tmp / "a.parquet") ...
        # runs/data is now the complete new folder

    With `kind`, `dest` is checked first (:func:`check_output_path`) and the
    marker file is written. Stale temporaries of killed earlier writes of `dest`
    are removed on entry. On an exception the temporary folder is deleted and
    `dest` is unchanged.
    """
    dest = Path(dest)
    if kind is not None:
        check_output_path(dest, kind, recognise)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(dest.parent, dest.name)
    tmp = _temp_sibling(dest, keep_suffix=False)
    os.mkdir(tmp)  # mode 0o777 & ~umask, unlike mkdtemp's 0700
    try:
        yield tmp
        if kind is not None:
            (tmp / OUTPUT_MARKER).write_text(json.dumps({"kind": kind}) + "\n")
        replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def process_start(pid: int) -> float | None:
    """Start time (epoch seconds) of process `pid`, or None where unknown (non-Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime"))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _owner_gone(pid: int, mtime: float) -> bool:
    """True if the process that made a temporary with this pid and mtime no longer runs."""
    if pid == os.getpid():
        return False  # ours: maybe still being written by another thread
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, someone else's
    except OverflowError:
        return True
    start = process_start(pid)
    # the pid was reused: the process holding it now started after the temporary was written
    return start is not None and start > mtime + 1.0


def clean_stale_temps(parent: str | os.PathLike, name: str) -> list[Path]:
    """Removes the temporaries that killed writers of `parent/name` left behind.

    Only names of our pattern are considered, and only those whose writing
    process is dead (or whose pid now belongs to a process started after the
    temporary was written). A ``.binllm-old.`` folder of a swap that died
    half-way is put back as `name` when `name` is missing. Returns the removed
    paths.
    """
    parent = Path(parent)
    pat = re.compile(r"^\." + re.escape(name) + r"\.binllm-(tmp|old)\.(\d+)\.[0-9a-f]{8}")
    removed: list[Path] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    dest = parent / name
    for e in sorted(entries):
        m = pat.match(e.name)
        if not m:
            continue
        try:
            mtime = e.lstat().st_mtime
        except FileNotFoundError:
            continue
        if not _owner_gone(int(m.group(2)), mtime):
            continue
        if m.group(1) == "old" and not dest.exists() and not dest.is_symlink():
            os.replace(e, dest)  # the swap died between its two renames: restore the old output
            continue
        _remove(e)
        removed.append(e)
    return removed
