"""Thread counts per pipeline stage: the one place that decides them.

Why: torch's OpenMP workers spin-wait at every barrier. On a machine whose
cores are shared with other busy processes, a spinning worker burns the time
slice its partner needs, and a loop of many small tensor ops (the hash model)
slows down several-fold (measured on 2 cores next to two ``yes`` processes:
7.2 s quiet, 49.8 s with torch's default 2 threads, 11.9 s with 1 thread).
Small-op stages therefore run on one torch thread (no OpenMP region is
forked at all), while the big matmuls of LLM scoring/tuning and binllm's own
``std::thread`` kernels (which block instead of spinning) keep every core.

Stage kinds:

- ``hash``: the hash model / MF training loop (small tensor ops).
- ``data``: the data protocol (pandas/numpy; torch is not used).
- ``llm``: LLM scoring and LoRA tuning (big matmuls).
- ``kernels``: binllm's C++ kernels (:func:`binllm.set_num_threads`).

Overrides, strongest first: :func:`set_override` (the CLI's ``--threads``),
the environment variable ``BINLLM_STAGE_THREADS``, then the defaults. A spec
is either one integer for every kind (``"2"``) or ``kind=n`` pairs
(``"hash=1,llm=2"``); kinds not named keep their default.

Use::

    from binllm import threads
    with threads.stage("hash"):
        hashing.train(...)

``torch.set_num_threads`` is process-global: stages are meant to run one after
another in the main thread, not concurrently from several Python threads.
Torch's inter-op pool is left alone: binllm never uses inter-op parallelism,
and torch allows setting it only once, before first use, so it cannot be
restored on exit.
"""
from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator

KINDS: tuple[str, ...] = ("hash", "data", "llm", "kernels")
ENV_VAR = "BINLLM_STAGE_THREADS"

#: OpenMP settings the command line puts into the environment before torch loads
#: (a value the user set wins). With the default (spin, then sleep) policy a
#: torch worker that reaches a barrier first keeps spinning on its core; next
#: to another busy process that spin takes the time slice its partner needs to
#: finish, and every parallel region waits on the slower one. PASSIVE makes the
#: waiting worker sleep at once. Measured on 2 cores: LoRA tuning of SmolLM2
#: next to a busy process took ~30 s per step with the default policy and
#: ~3 s with PASSIVE (1.5 s on a quiet machine).
OPENMP_ENV: dict[str, str] = {"OMP_WAIT_POLICY": "PASSIVE"}

_override: dict[str, int] = {}
_override_spec: str | None = None


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def _env_int(name: str) -> int | None:
    """A positive integer from an environment variable the user set, else None."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        v = int(raw)
    except ValueError:
        return None  # torch / the C++ core ignore a malformed value too; we follow them
    return v if v > 0 else None


def defaults() -> dict[str, int]:
    """The built-in thread count per kind, before overrides.

    ``hash`` and ``data`` use 1 thread (bench/results/contention.md: small ops
    gain little from a second thread and lose several-fold under contention).
    ``llm`` uses every core, or ``OMP_NUM_THREADS`` when the user set it;
    ``kernels`` uses every core, or ``BINLLM_NUM_THREADS`` when set.
    """
    cores = available_cores()
    return {
        "hash": 1,
        "data": 1,
        "llm": _env_int("OMP_NUM_THREADS") or cores,
        "kernels": _env_int("BINLLM_NUM_THREADS") or cores,
    }


def parse_spec(spec: str, source: str = "spec") -> dict[str, int]:
    """Parses ``"n"`` or ``"kind=n,kind=n"`` into ``{kind: n}``.

    Args:
        spec: the text to parse.
        source: the name shown in errors (the argument or variable it came from).
    Raises:
        ValueError: empty text, an unknown or repeated kind, or a count that is not an integer >= 1.
    """
    if not isinstance(spec, str):
        raise TypeError(f"{source} must be a str like 'hash=1,llm=2' or '2'; got {type(spec).__name__}")
    text = spec.strip()
    expected = f"an integer >= 1 or kind=n pairs like 'hash=1,llm=2' with kinds {', '.join(KINDS)}"
    if not text:
        raise ValueError(f"{source} is empty; expected {expected}")
    if "=" not in text:
        return {k: _count(text, source, expected) for k in KINDS}
    out: dict[str, int] = {}
    for part in text.split(","):
        kind, sep, value = part.partition("=")
        kind = kind.strip()
        if not sep or kind not in KINDS:
            raise ValueError(f"{source}={spec!r}: {part.strip()!r} is not kind=n; expected {expected}")
        if kind in out:
            raise ValueError(f"{source}={spec!r}: kind {kind!r} is given twice")
        out[kind] = _count(value, source, expected, spec)
    return out


def _count(value: str, source: str, expected: str, spec: str | None = None) -> int:
    v = value.strip()
    shown = spec if spec is not None else value
    if not v.isdigit() or int(v) < 1:
        raise ValueError(f"{source}={shown!r}: {v!r} is not a thread count; expected {expected}")
    return int(v)


def set_override(spec: str | None) -> None:
    """Sets (or with None / "" clears) the process-wide override, e.g. from ``--threads``.

    Raises:
        ValueError: the spec does not parse (see :func:`parse_spec`); the previous override stays.
    """
    global _override, _override_spec
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        _override, _override_spec = {}, None
        return
    _override, _override_spec = parse_spec(spec, "--threads"), spec


def plan() -> dict[str, int]:
    """Thread count per stage kind after overrides (for ``binllm doctor`` and :func:`stage`).

    Raises:
        ValueError: ``BINLLM_STAGE_THREADS`` is set but does not parse; the message names it.
    """
    p = defaults()
    env = os.environ.get(ENV_VAR)
    if env is not None:
        p.update(parse_spec(env, ENV_VAR))
    p.update(_override)
    return p


def configure_openmp() -> bool:
    """Puts :data:`OPENMP_ENV` into ``os.environ`` where the user has not set
    those variables. OpenMP reads them once, when torch loads it, so this must
    run before ``import torch``: the command line calls it first thing; a
    library user calls it at the top of a script (or sets the variables).

    Returns whether it was in time (torch not imported yet)."""
    if "torch" in sys.modules:
        return False
    for k, v in OPENMP_ENV.items():
        os.environ.setdefault(k, v)
    return True


def openmp_policy() -> str:
    """What torch's OpenMP waiting policy is (or will be) in this process, in words."""
    v = os.environ.get("OMP_WAIT_POLICY")
    if v is None:
        return "OpenMP wait policy: default (spin then sleep; slow on a shared CPU: run binllm.threads." \
               "configure_openmp() before importing torch)"
    return f"OpenMP wait policy: {v}"


def describe() -> str:
    """One line for ``binllm doctor``: the plan and where overrides came from."""
    p = plan()
    src = []
    if os.environ.get(ENV_VAR) is not None:
        src.append(f"{ENV_VAR}={os.environ[ENV_VAR]!r}")
    if _override_spec is not None:
        src.append(f"--threads {_override_spec!r}")
    body = ", ".join(f"{k}={p[k]}" for k in KINDS)
    return f"stage threads: {body} ({available_cores()} cores; " + (
        "overrides: " + ", ".join(src) if src else "defaults") + "); " + openmp_policy()


_warned_torch = False


@contextlib.contextmanager
def stage(kind: str) -> Iterator[int]:
    """Runs the block with the thread counts of `kind`; restores the previous ones on exit.

    Sets ``torch.set_num_threads`` (when torch is imported or the stage is
    ``hash``/``llm``) and ``binllm.set_num_threads`` (the C++ kernels). The
    ``kernels`` stage sets torch to the same count as ``llm``; other stages
    leave the C++ kernels at their ``kernels`` count. Yields the stage's count.

    Raises:
        ValueError: `kind` is not one of :data:`KINDS`, or ``BINLLM_STAGE_THREADS`` is malformed.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    p = plan()
    n = p[kind]
    torch_n = p["llm"] if kind == "kernels" else n
    from . import _core

    torch = None
    if kind in ("hash", "llm") or "torch" in sys.modules:
        import torch as _torch

        torch = _torch
    before_core = _core.num_threads()
    before_torch = torch.get_num_threads() if torch is not None else None
    _core.set_num_threads(p["kernels"])
    if torch is not None:
        _set_torch(torch, torch_n)
    try:
        yield n
    finally:
        _core.set_num_threads(before_core)
        if torch is not None and before_torch is not None:
            _set_torch(torch, before_torch)


def _set_torch(torch, n: int) -> None:  # noqa: ANN001 - the torch module, imported lazily
    global _warned_torch
    torch.set_num_threads(n)
    # Some builds ignore the call once OpenMP has started; say so once rather than run silently slow.
    if torch.get_num_threads() != n and not _warned_torch:
        _warned_torch = True
        warnings.warn(f"torch.set_num_threads({n}) did not take effect (torch reports {torch.get_num_threads()}); "
                      f"set OMP_NUM_THREADS={n} before starting Python", RuntimeWarning, stacklevel=3)
