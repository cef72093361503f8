"""Thread counts per pipeline stage: the one place that decides them.

Why: torch's OpenMP workers spin-wait at every barrier. On a machine whose
cores are shared with other busy processes, a spinning worker burns the time
slice its partner needs, and a loop of many small tensor ops (the hash model)
slows down several-fold (measured on 2 cores next to two ``yes`` processes:
7.2 s quiet, 49.8 s with torch's default 2 threads, 11.9 s with 1 thread).
Spinning is faster on a quiet machine, so the choice is made once, at start
(:func:`configure_openmp`, called first thing by the command line): when
other processes already keep the CPU busy, OpenMP workers sleep instead of
spinning (``OMP_WAIT_POLICY=PASSIVE``) and the hash model runs on one torch
thread; otherwise both keep torch's defaults. LLM scoring/tuning (big
matmuls, run as whole batches or batch shards side by side, see below) and
binllm's own ``std::thread`` kernels (which block instead of spinning) use
every core either way.

Stage kinds:

- ``hash``: the hash model / MF training loop (small tensor ops).
- ``data``: the data protocol (pandas/numpy; torch is not used).
- ``llm``: LLM scoring and LoRA tuning (big matmuls; on a CPU the count is
  the number of :func:`map_parallel` workers).
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

Inside the ``llm`` stage, work that splits into independent pieces (batches to
score, shards of a training batch) runs through :func:`map_parallel`: one
Python worker per torch thread, each with one torch thread, instead of every
matmul split across OpenMP threads. A forward pass then has no barrier at which
a worker waits for a partner that another process holds off its core
(bench/results/contention.md), and it is faster on a quiet machine too.
Torch's inter-op pool is left alone: binllm never uses inter-op parallelism,
and torch allows setting it only once, before first use, so it cannot be
restored on exit.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import TypeVar

_T = TypeVar("_T")
_R = TypeVar("_R")

KINDS: tuple[str, ...] = ("hash", "data", "llm", "kernels")
ENV_VAR = "BINLLM_STAGE_THREADS"

#: OpenMP settings for a machine that is busy when binllm starts (a value the
#: user set wins). With OpenMP's default (spin, then sleep) a torch worker that
#: reaches a barrier first keeps spinning; next to other busy processes that
#: spin holds a core while its partner waits for one, and every parallel region
#: waits on the slower worker. PASSIVE makes the waiting worker sleep at once,
#: which costs time on a quiet machine (waking it up is slower than spinning).
#: Measured on 2 cores, LoRA step of SmolLM2 (batch 8, bf16 autocast), s/step:
#: default 1.81 quiet / 4.85 next to two busy processes; PASSIVE 2.34 / 3.04.
#: So binllm picks PASSIVE only when the CPU is already busy at start.
OPENMP_ENV: dict[str, str] = {"OMP_WAIT_POLICY": "PASSIVE"}
#: Cores that other processes must keep busy, at start, for the machine to count as shared.
BUSY_CORES = 0.5
#: Carries the decision to child processes (torchrun ranks, subprocesses), which
#: inherit OMP_WAIT_POLICY too and must not measure again: "1" shared, "0" quiet.
SHARED_ENV = "BINLLM_CPU_SHARED"

_startup: dict[str, object] = {}  # what configure_openmp saw and did (for doctor and describe)

_override: dict[str, int] = {}
_override_spec: str | None = None


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def hardware_threads() -> int:
    """Hardware threads of the machine, as the C++ core counts them (``std::thread::hardware_concurrency``)."""
    return max(1, min(os.cpu_count() or 1, 1 << 16))


def max_threads() -> int:
    """The cap of every thread count binllm sets: 4 x the hardware threads (the core's cap too).
    More threads than that only cost memory and start-up time."""
    return 4 * hardware_threads()


def parse_count(name: str, raw: str, fallback: str) -> tuple[int | None, str | None]:
    """A thread count from the text of variable or argument `name`, exactly as the C++ core parses
    ``BINLLM_NUM_THREADS``: decimal digits only (no sign, no spaces), at least 1; above
    :func:`max_threads` it is capped. Returns (count or None when invalid, the problem in words or
    None); `fallback` names what is used instead of an invalid value in that message."""
    if re.fullmatch(r"[0-9]+", raw) and 1 <= int(raw) < 2**63:  # the core's strtoll overflows past int64
        v = int(raw)
        if v <= max_threads():
            return v, None
        return max_threads(), f"{name}={raw!r} is more than 4 x the hardware threads; using {max_threads()}"
    return None, f"{name}={raw!r} is not a positive whole number; using {fallback}"


def _env_count(name: str) -> int | None:
    """The count of a thread variable the user set (:func:`parse_count`), else None (unset or invalid)."""
    raw = os.environ.get(name, "")
    return parse_count(name, raw, "the default")[0] if raw else None


def _env_int(name: str) -> int | None:
    """A positive integer from a variable of another library (OMP_NUM_THREADS): torch and OpenMP
    ignore a malformed value, and so does binllm; capped at :func:`max_threads`."""
    raw = os.environ.get(name, "").strip()
    try:
        v = int(raw)
    except ValueError:
        return None
    return min(v, max_threads()) if v > 0 else None


def env_problems() -> list[str]:
    """Problems with the thread variables parsed here (``BINLLM_STAGE_THREADS``, ``BINLLM_CPU_SHARED``),
    one line each naming the variable and the fallback used; ``BINLLM_NUM_THREADS`` is parsed the same
    way (:func:`parse_count`) and reported by the C++ core."""
    out = []
    raw = os.environ.get(ENV_VAR)
    if raw is not None:
        try:
            _, capped = _parse_spec(raw, ENV_VAR)
            out += capped
        except ValueError as e:
            out.append(f"{e}; using the defaults")
    shared = _startup.get("inherited", os.environ.get(SHARED_ENV))  # configure_openmp overwrites the variable
    if shared is not None and shared not in ("0", "1"):
        out.append(f"{SHARED_ENV}={shared!r} is not 0 or 1; measuring the CPU load instead")
    return out


def defaults() -> dict[str, int]:
    """The built-in thread count per kind, before overrides.

    ``data`` uses 1 thread (pandas/numpy; torch is not used). ``hash`` uses
    every core, or 1 when :func:`configure_openmp` found the CPU busy at start
    (bench/results/contention.md: its small ops lose several-fold to OpenMP
    barriers next to busy processes, and gain little from a second core).
    ``llm`` uses every core, or ``OMP_NUM_THREADS`` when the user set it;
    ``kernels`` uses every core, or ``BINLLM_NUM_THREADS`` when set.
    """
    cores = available_cores()
    return {
        "hash": 1 if _cpu_shared() else (_env_int("OMP_NUM_THREADS") or cores),
        "data": 1,
        "llm": _env_int("OMP_NUM_THREADS") or cores,
        "kernels": _env_count("BINLLM_NUM_THREADS") or cores,
    }


def parse_spec(spec: str, source: str = "spec") -> dict[str, int]:
    """Parses ``"n"`` or ``"kind=n,kind=n"`` into ``{kind: n}``; a count above
    :func:`max_threads` is capped at it.

    Args:
        spec: the text to parse.
        source: the name shown in errors (the argument or variable it came from).
    Raises:
        ValueError: empty text, an unknown or repeated kind, or a count that is not a whole number >= 1.
    """
    return _parse_spec(spec, source)[0]


def _parse_spec(spec: str, source: str) -> tuple[dict[str, int], list[str]]:
    """:func:`parse_spec` and the warnings for capped counts."""
    if not isinstance(spec, str):
        raise TypeError(f"{source} must be a str like 'hash=1,llm=2' or '2'; got {type(spec).__name__}")
    text = spec.strip()
    expected = f"a whole number >= 1 or kind=n pairs like 'hash=1,llm=2' with kinds {', '.join(KINDS)}"
    if not text:
        raise ValueError(f"{source}={spec!r} is empty; expected {expected}")
    capped: list[str] = []
    if "=" not in text:
        n = _count(text, source, expected, spec, capped)
        return {k: n for k in KINDS}, capped
    out: dict[str, int] = {}
    for part in text.split(","):
        kind, sep, value = part.partition("=")
        kind = kind.strip()
        if not sep or kind not in KINDS:
            raise ValueError(f"{source}={spec!r}: {part.strip()!r} is not kind=n; expected {expected}")
        if kind in out:
            raise ValueError(f"{source}={spec!r}: kind {kind!r} is given twice")
        out[kind] = _count(value, source, expected, spec, capped)
    return out, capped


def _count(value: str, source: str, expected: str, spec: str, capped: list[str]) -> int:
    v = value.strip()
    n, problem = parse_count(source, v, "")
    if n is None:
        raise ValueError(f"{source}={spec!r}: {v!r} is not a thread count; expected {expected}")
    if problem:
        capped.append(problem.replace(f"{source}={v!r}", f"{source}={spec!r}: {v}"))
    return n


def set_override(spec: str | None) -> None:
    """Sets (or with None / "" clears) the process-wide override, e.g. from ``--threads``.

    Raises:
        ValueError: the spec does not parse (see :func:`parse_spec`); the previous override stays.
    """
    global _override, _override_spec
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        _override, _override_spec = {}, None
        return
    parsed, capped = _parse_spec(spec, "--threads")
    for problem in capped:
        warnings.warn(problem, RuntimeWarning, stacklevel=2)
    _override, _override_spec = parsed, spec


def plan() -> dict[str, int]:
    """Thread count per stage kind after overrides (for ``binllm doctor`` and :func:`stage`).

    A ``BINLLM_STAGE_THREADS`` that does not parse is ignored (the defaults apply): like every
    binllm variable it gives a warning at ``import binllm`` and is listed by ``binllm doctor``
    (:func:`env_problems`).
    """
    p = defaults()
    env = os.environ.get(ENV_VAR)
    if env is not None:
        try:
            p.update(parse_spec(env, ENV_VAR))
        except ValueError:
            pass  # reported by env_problems(), at import and by doctor
    p.update(_override)
    return p


def others_busy_cores(window_s: float = 0.25) -> float | None:
    """Cores this process may run on that other processes keep busy, sampled
    from /proc/stat over `window_s` seconds (only the CPUs in this process's
    affinity; its own use subtracted); None where that cannot be read.

    Raises:
        ValueError: `window_s` is not a number of seconds > 0.
    """
    import time

    if not (isinstance(window_s, (int, float)) and window_s > 0):
        raise ValueError(f"window_s must be a number of seconds > 0; got {window_s!r}")

    try:
        cpus = {f"cpu{i}" for i in os.sched_getaffinity(0)}
        tick = os.sysconf("SC_CLK_TCK")

        def sample() -> float:
            busy = 0.0
            with open("/proc/stat", encoding="ascii") as f:
                for line in f:
                    name, *fields = line.split()
                    if name in cpus:
                        v = [float(x) for x in fields[:8]]  # guest time is already inside user/nice
                        busy += sum(v) - v[3] - v[4]  # minus idle and iowait
            return busy

        busy0, t0, own0 = sample(), time.monotonic(), sum(os.times()[:2])
        time.sleep(window_s)
        busy1, t1, own1 = sample(), time.monotonic(), sum(os.times()[:2])
    except (OSError, ValueError, AttributeError, IndexError):  # no /proc, no sysconf, an odd line
        return None
    return max(0.0, ((busy1 - busy0) / tick - (own1 - own0)) / max(t1 - t0, 1e-6))


def _cpu_shared() -> bool:
    """Whether the CPU counts as shared for this process (decided once; see :func:`configure_openmp`)."""
    if "shared" not in _startup:
        configure_openmp()
    return bool(_startup.get("shared"))


def configure_openmp(window_s: float = 0.25) -> bool:
    """Decides, once per process, whether the CPU is shared: other processes
    keep at least :data:`BUSY_CORES` of this process's cores busy now. Then
    the ``hash`` stage runs on one torch thread (see :func:`defaults`) and,
    where the user set no ``OMP_WAIT_POLICY``, :data:`OPENMP_ENV` goes into
    ``os.environ``. OpenMP reads it once, when torch loads, so that part needs
    this to run before ``import torch``: the command line calls it first
    thing; a library user calls it at the top of a script (or sets the
    variable). Child processes inherit the decision (:data:`SHARED_ENV`);
    torchrun ranks, which start together and would see each other, take the
    CPU as quiet unless told.

    Returns whether it was in time for OpenMP (torch not imported yet)."""
    in_time = "torch" not in sys.modules
    if "shared" in _startup:
        return in_time
    inherited = os.environ.get(SHARED_ENV)
    _startup["inherited"] = inherited
    if inherited not in ("0", "1"):
        inherited = None  # a bad value: reported by env_problems(), the load is measured instead
    if inherited in ("0", "1"):
        shared, busy, reason = inherited == "1", None, f"{SHARED_ENV}={inherited} (from the parent process)"
    elif int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1) > 1:
        shared, busy, reason = False, None, "one of several local torchrun ranks: load not sampled"
    else:
        busy = others_busy_cores(window_s)
        shared = busy is not None and busy >= BUSY_CORES
        reason = (f"{busy:.1f} cores busy with other processes at start" if busy is not None
                  else "CPU load unknown (no /proc/stat)")
    user_policy = "OMP_WAIT_POLICY" in os.environ and inherited is None
    if shared and in_time and not user_policy:
        for k, v in OPENMP_ENV.items():
            os.environ.setdefault(k, v)
    os.environ[SHARED_ENV] = "1" if shared else "0"
    if user_policy:
        reason += "; OMP_WAIT_POLICY set by the user"
    elif not in_time:
        reason += "; torch was loaded before binllm.threads.configure_openmp(), OpenMP's policy unchanged"
    _startup.update(shared=shared, busy_cores=busy, reason=reason)
    return in_time


def openmp_policy() -> str:
    """What torch's OpenMP waiting policy is (or will be) in this process, and why, in words."""
    v = os.environ.get("OMP_WAIT_POLICY", "default (spin, then sleep)")
    why = _startup.get("reason")
    return f"OpenMP wait policy: {v}" + (f" ({why})" if why else "")


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
        ValueError: `kind` is not one of :data:`KINDS`.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    p = plan()
    n = p[kind]
    torch_n = p["llm"] if kind == "kernels" else n
    from binllm import _core

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


_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    """A kept pool of `workers` threads (made once: new threads per call would also start new OpenMP teams)."""
    with _pools_lock:
        if workers not in _pools:
            _pools[workers] = ThreadPoolExecutor(workers, thread_name_prefix="binllm-worker")
        return _pools[workers]


def workers_for(jobs: int, total: int) -> tuple[int, int]:
    """(workers, torch threads each) for `jobs` independent pieces of work on `total` threads:
    one worker per thread while there are pieces enough, the threads shared out otherwise.

    Raises:
        ValueError: `jobs` is not an integer >= 0 or `total` not an integer >= 1."""
    for name, v, low in (("jobs", jobs, 0), ("total", total, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{name} must be an integer >= {low}; got {v!r}")
    w = max(1, min(int(total), int(jobs)))
    return w, max(1, int(total) // w)


def map_parallel(fn: Callable[[_T], _R], items: Sequence[_T], total: int | None = None,
                 on_result: Callable[[int, _R], None] | None = None, max_workers: int | None = None) -> list[_R]:
    """``[fn(x) for x in items]`` with the pieces on parallel CPU workers (see the module docstring).

    `total` threads (default: torch's current count, which :func:`stage` set) become
    :func:`workers_for` workers (at most `max_workers`) with torch set to the threads
    each for the duration of the call, then restored. Each worker runs `fn` in the caller's grad,
    inference and CPU-autocast modes (torch keeps those per thread). With one
    worker, or one item, `fn` runs in the calling thread, on `total` torch threads
    (set for the call only where that differs from torch's count). `on_result(i, result)`
    is called in the calling thread, in order, as results arrive (for progress).
    The first exception raised by `fn` (in item order) is raised here once the
    pieces already running end; the others are dropped. Not reentrant: torch's thread count is process-wide.

    Raises:
        ValueError: `total` or `max_workers` is not an integer >= 1.
    """
    import torch

    if total is None:
        total = torch.get_num_threads()
    for name, v in (("total", total), ("max_workers", max_workers)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{name} must be a thread count, an integer >= 1; got {v!r}")
    workers, each = workers_for(min(len(items), max_workers or len(items)), total)
    with _torch_threads(torch, each):
        if workers == 1:  # in the calling thread (an explicit `total` is honoured here too)
            out = []
            for i, x in enumerate(items):
                out.append(fn(x))
                if on_result is not None:
                    on_result(i, out[-1])
            return out
        return _map_on_pool(torch, fn, items, workers, on_result)


@contextlib.contextmanager
def _torch_threads(torch, n: int) -> Iterator[None]:  # noqa: ANN001 - the torch module, imported lazily
    """torch at `n` threads inside the block, its count restored after (untouched where it is `n`)."""
    before = torch.get_num_threads()
    if n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _map_on_pool(torch, fn: Callable[[_T], _R], items: Sequence[_T], workers: int,  # noqa: ANN001
                 on_result: Callable[[int, _R], None] | None) -> list[_R]:
    """map_parallel's pieces on the kept pool of `workers` threads, in the caller's torch modes."""
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    autocast = torch.is_autocast_enabled("cpu")
    autocast_dtype = torch.get_autocast_dtype("cpu")

    def call(x: _T) -> _R:
        with contextlib.ExitStack() as modes:
            modes.enter_context(torch.inference_mode() if inference else torch.set_grad_enabled(grad))
            if autocast:
                modes.enter_context(torch.autocast("cpu", dtype=autocast_dtype))
            return fn(x)

    futures = []
    try:
        futures = [_pool(workers).submit(call, x) for x in items]
        out = []
        for i, f in enumerate(futures):
            out.append(f.result())
            if on_result is not None:
                on_result(i, out[-1])
        return out
    except BaseException:
        # an error in a piece, or Ctrl-C here: drop the pieces not started, let the running ones end
        for f in futures:
            f.cancel()
        wait(futures)
        raise
