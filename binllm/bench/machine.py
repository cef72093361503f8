"""Machine facts for a benchmark table: what ran, and the measured limits that
bound the kernels, so every row can be read as a share of what the machine can do.

What ran: CPU model and SIMD flags (``/proc/cpuinfo``), binllm's chosen kernel
variant and the compiled / supported ones (:func:`binllm.build_info`), thread
counts, and the versions of Python and every peer library that is installed.

Two limits are measured, not looked up:

* **read bandwidth** (bytes/s): how fast numpy reduces (``sum`` and ``max`` over
  uint64, the faster of the two) a buffer twice the size of the last-level cache,
  each of ``t`` threads reducing one slice (numpy releases the GIL there). It
  bounds sign packing, which reads 32 bits of float per output bit. Kernels
  whose input fits in a cache are instead compared with a read of the same
  buffer (:func:`reader`).
* **popcount rate** (64-bit words/s): the fastest stream of ``popcount(a XOR b)``
  over cache-resident 64-bit words any installed library reached at ``t``
  threads: all-pairs Hamming distances of wide codes (d = 256, 1024, 4096, so
  popcounts dominate the output writes) by binllm, FAISS and NumKong, and
  ``numpy.bitwise_count`` (:func:`popcount_rates`). It is an empirical ceiling of
  this machine, not the instruction's data-sheet peak. It bounds all-pairs
  scores and top-k: a pair of d-bit codes needs d/64 words.

Limits are the best of their repeats (a ceiling); table rows are medians.
"""
from __future__ import annotations

import functools
import importlib
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

#: Distribution names to look up for each library a table may mention (the first one installed wins).
PACKAGES: dict[str, tuple[str, ...]] = {
    "numpy": ("numpy",),
    "torch": ("torch",),
    "faiss": ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11", "faiss"),
    "numkong": ("numkong",),
    "simsimd": ("simsimd",),
    "usearch": ("usearch",),
    "pandas": ("pandas",),
    "pyarrow": ("pyarrow",),
    "transformers": ("transformers",),
    "peft": ("peft",),
    "matplotlib": ("matplotlib",),
}

def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (:mod:`binllm._cpuinfo`), else the platform's processor name."""
    from binllm import _cpuinfo

    return _cpuinfo.model() or platform.processor()


def cpu_flags() -> list[str]:
    """The SIMD-related CPU flags (AVX*, AMX*, popcnt, f16c), sorted."""
    from binllm import _cpuinfo

    return sorted(f for f in _cpuinfo.flags() if f.startswith(("avx", "amx")) or f in ("popcnt", "f16c"))


def last_level_cache_bytes() -> int:
    """Size of the largest CPU cache in bytes (0 where unknown)."""
    sizes = []
    for name in ("SC_LEVEL3_CACHE_SIZE", "SC_LEVEL2_CACHE_SIZE"):
        try:
            sizes.append(int(os.sysconf(name)))
        except (ValueError, OSError):
            pass
    return max([0, *sizes])


def versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each library in `names` (keys of PACKAGES), None where not installed."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        out[name] = None
        for dist in PACKAGES.get(name, (name,)):
            try:
                out[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return out


def hardware_threads() -> int:
    """CPUs this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@functools.cache
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="binllm-bench")


def _split(buf: np.ndarray, threads: int) -> list[np.ndarray]:
    return np.array_split(buf.reshape(-1), threads) if threads > 1 else [buf.reshape(-1)]


def reader(buf: np.ndarray, threads: int) -> Callable[[], object]:
    """A call that reads every byte of contiguous `buf` once (numpy sum over uint64 words),
    split over `threads` threads."""
    words = buf.reshape(-1).view(np.uint64) if buf.nbytes % 8 == 0 else buf.reshape(-1).view(np.uint8)
    parts = _split(words, threads)
    if threads == 1:
        return lambda: words.sum()
    pool = _pool(threads)
    return lambda: list(pool.map(np.sum, parts))


def writer(shape: tuple[int, ...], dtype: type | np.dtype, threads: int,
           into: np.ndarray | None = None) -> Callable[[], object]:
    """A call that writes a `shape` array of `dtype` once: a fresh ``np.empty`` (paying its page
    faults, as a kernel that allocates its output does) or, with `into` (C-contiguous), that
    existing buffer; split over `threads` threads by rows. Bytes are set as by memset, numpy's
    fastest write."""
    def fill(dst: np.ndarray) -> None:
        dst.reshape(-1).view(np.uint8).fill(1)

    if into is not None:
        parts = np.array_split(into, threads) if threads > 1 else [into]
        return lambda: list(_pool(threads).map(fill, parts)) if threads > 1 else fill(into)

    def fresh() -> np.ndarray:
        out = np.empty(shape, dtype)
        if threads > 1:
            list(_pool(threads).map(fill, np.array_split(out, threads)))
        else:
            fill(out)
        return out

    return fresh


def best_time(fn: Callable[[], object], repeats: int = 5) -> float:
    """The fastest of `repeats` timed calls after one untimed call (a ceiling, not a typical time)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def read_bandwidth(threads: int, nbytes: int | None = None, repeats: int = 5) -> float:
    """Measured memory read bandwidth in bytes/s with `threads` threads over a buffer of `nbytes`
    (default: twice the last-level cache, at least 256 MiB, at most a quarter of free memory)."""
    if nbytes is None:
        nbytes = max(256 << 20, 2 * last_level_cache_bytes())
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            nbytes = min(nbytes, max(64 << 20, free // 4))
        except (ValueError, OSError):
            pass
    buf = np.ones(nbytes // 8, np.uint64)  # written once, so every page is mapped before timing
    parts = _split(buf, threads)
    best = float("inf")
    for op in (np.sum, np.max):
        def read(op: Callable[[np.ndarray], object] = op) -> object:
            return list(_pool(threads).map(op, parts)) if threads > 1 else op(buf)

        best = min(best, best_time(read, repeats))
    return buf.nbytes / best


def _optional(module: str) -> Any:
    """The module if it imports, else None (typed Any: peers' stubs, where they ship any, are partial)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def split_rows(fn: Callable[[int, int], object], n: int, threads: int) -> Callable[[], object]:
    """A call running ``fn(start, end)`` over `threads` ranges of ``range(n)`` on a thread pool (for
    libraries whose Python call is single-threaded but takes a row range)."""
    if threads == 1:
        return lambda: fn(0, n)
    bounds = np.linspace(0, n, threads + 1).astype(int).tolist()
    ranges = list(zip(bounds[:-1], bounds[1:]))
    return lambda: list(_pool(threads).map(lambda r: fn(*r), ranges))


def _popcount_routes(q: np.ndarray, items: np.ndarray, d: int, threads: int) -> dict[str, Callable[[], object]]:
    """All-pairs Hamming distances of `q` x `items` by every installed library, as calls to time."""
    import binllm

    out = np.empty((q.shape[0], items.shape[0]), np.int32)
    routes: dict[str, Callable[[], object]] = {"binllm": lambda: binllm.hamming_all(q, items, d, out=out)}
    faiss, numkong = _optional("faiss"), _optional("numkong")
    if faiss is not None:
        routes["faiss"] = lambda: faiss.hammings(faiss.swig_ptr(q), faiss.swig_ptr(items), q.shape[0],
                                                 items.shape[0], d // 8, faiss.swig_ptr(out))
    if numkong is not None:
        packed, nk_out = numkong.hammings_pack(items), numkong.empty(out.shape, dtype="uint32")
        routes["numkong"] = split_rows(
            lambda a, b: numkong.hammings_packed(q, packed, out=nk_out, start_row=a, end_row=b), q.shape[0], threads)
    return routes


def popcount_rates(threads: int, repeats: int = 7) -> dict[str, float]:
    """Measured XOR+popcount rates in 64-bit words/s with `threads` threads, the best of each route
    over cache-resident codes of d = 256, 1024 and 4096 (about 512 KiB of items, at most 1 MiB of
    int32 output, so popcounts and not output writes dominate): ``binllm`` (hamming_all, the chosen
    variant), ``faiss`` (hammings) and ``numkong`` (hammings_packed, rows split over threads) where
    installed, ``numpy`` (bitwise_count over 256 KiB, 1 thread; numpy >= 2.0), and ``best``: the
    fastest, the limit. Which library is fastest varies with d; a limit from binllm alone would
    understate what the machine does."""
    import binllm

    rng = np.random.default_rng(0)
    rates: dict[str, float] = {}
    before = binllm.num_threads()
    faiss = _optional("faiss")
    faiss_before = faiss.omp_get_max_threads() if faiss is not None else None
    if faiss is not None:
        faiss.omp_set_num_threads(threads)
    binllm.set_num_threads(threads)
    try:
        for d in (256, 1024, 4096):
            nb = d // 8
            m = (512 << 10) // nb
            n = min(64, (1 << 20) // (4 * m))
            q: np.ndarray = rng.integers(0, 256, (n, nb), dtype=np.uint8)
            items: np.ndarray = rng.integers(0, 256, (m, nb), dtype=np.uint8)
            words = n * m * d / 64
            for name, fn in _popcount_routes(q, items, d, threads).items():
                rates[name] = max(rates.get(name, 0.0), words / best_time(fn, repeats))
    finally:
        binllm.set_num_threads(before)
        if faiss is not None:
            faiss.omp_set_num_threads(faiss_before)
    if hasattr(np, "bitwise_count"):
        w = rng.integers(0, 2**63, 32768, dtype=np.uint64)
        counts = np.empty(w.shape, np.uint8)
        rates["numpy"] = w.size / best_time(lambda: np.bitwise_count(w, out=counts), 20 * repeats)
    rates["best"] = max(rates.values())
    return rates


@dataclass
class Limits:
    """Measured limits per thread count.

    Args:
        read_bytes_per_s: memory read bandwidth (:func:`read_bandwidth`), the best at that many
            threads or fewer.
        popcount_words_per_s: XOR+popcount words/s, the best route (:func:`popcount_rates`) at
            that many threads or fewer.
        popcount_routes: every route's rate as measured, for the record.
    """

    read_bytes_per_s: dict[int, float] = field(default_factory=dict)
    popcount_words_per_s: dict[int, float] = field(default_factory=dict)
    popcount_routes: dict[int, dict[str, float]] = field(default_factory=dict)

    def popcount_pairs_per_s(self, d: int, threads: int) -> float:
        """The most d-bit code pairs per second the popcount rate allows (d/64 words a pair)."""
        return self.popcount_words_per_s[threads] * 64 / d


def measure_limits(threads_list: Iterable[int], read_bytes: int | None = None, popcount: bool = True) -> Limits:
    """Read bandwidth (and with `popcount`, the popcount rate) at each thread count in `threads_list`;
    each limit is the best seen at that many threads or fewer."""
    lim = Limits()
    best_read = best_pop = 0.0
    for t in sorted(set(threads_list)):
        # more threads can always do what fewer did, so a limit never drops with the thread count
        # (on a shared machine a measurement with more threads can come out lower)
        best_read = max(best_read, read_bandwidth(t, read_bytes))
        lim.read_bytes_per_s[t] = best_read
        if popcount:
            lim.popcount_routes[t] = popcount_rates(t)
            best_pop = max(best_pop, lim.popcount_routes[t]["best"])
            lim.popcount_words_per_s[t] = best_pop
    return lim


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parents[1]
    try:
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=here,
                           timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() or None


def facts(limits: Limits | None = None, packages: Iterable[str] = PACKAGES) -> dict[str, object]:
    """Everything a table records about its machine (JSON-serialisable), limits included when given."""
    import binllm

    built = binllm.build_info()
    out: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpu": cpu_model(),
        "cpu_flags": " ".join(cpu_flags()),
        "last_level_cache_mib": last_level_cache_bytes() / 2**20,
        "cpu_variant": built["cpu_variant"],
        "cpu_variants_compiled": built["cpu_variants_compiled"],
        "cpu_variants_supported": built["cpu_variants_supported"],
        "threads": {"os_cpu_count": os.cpu_count(), "usable": hardware_threads(),
                    "binllm_default": built["threads"]},
        "binllm": {"version": binllm.__version__, "compiler": built["compiler"], "cuda": built["cuda"],
                   "git": _git_commit(), "problems": built["problems"]},
        "versions": versions(packages),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
    }
    if limits is not None:
        out["read_bandwidth_GBps"] = {t: round(v / 1e9, 2) for t, v in limits.read_bytes_per_s.items()}
        out["popcount_1e9_words_per_s"] = {t: round(v / 1e9, 2) for t, v in limits.popcount_words_per_s.items()}
        out["popcount_routes_1e9_words_per_s"] = {t: {k: round(v / 1e9, 2) for k, v in r.items()}
                                                  for t, r in limits.popcount_routes.items()}
    return out


def summary(f: dict[str, object]) -> list[str]:
    """The facts of :func:`facts` as a few short lines (the head of a table, the first progress lines)."""
    th = f.get("threads", {})
    usable = th.get("usable") if isinstance(th, dict) else None
    vers = f.get("versions", {})
    installed = ", ".join(f"{k} {v}" for k, v in vers.items() if v) if isinstance(vers, dict) else ""
    lines = [f"CPU: {f.get('cpu') or 'unknown'} ({usable} usable threads); binllm variant {f.get('cpu_variant')} "
             f"(compiled {f.get('cpu_variants_compiled')}, supported {f.get('cpu_variants_supported')})",
             f"versions: {installed}"]
    if "read_bandwidth_GBps" in f:
        lines.append(f"read bandwidth GB/s by threads: {f['read_bandwidth_GBps']}; popcount rate 1e9 64-bit "
                     f"words/s by threads: {f['popcount_1e9_words_per_s']}")
    return lines


def start(say: Callable[[str], None], threads: Iterable[int], packages: Iterable[str] = PACKAGES,
          read_bytes: int | None = None) -> tuple[Limits, dict[str, object]]:
    """A suite's first step: measure the limits at `threads` (the read bandwidth over `read_bytes`,
    default: see :func:`read_bandwidth`), gather the facts, and say them."""
    threads = sorted(set(threads))
    say(f"machine facts; measuring read bandwidth and popcount rate at {threads} thread(s)")
    limits = measure_limits(threads, read_bytes)
    f = facts(limits, packages)
    for line in summary(f):
        say(line)
    return limits, f


def matmul_flops(dtype: str, threads: int, n: int = 2048, repeats: int = 10) -> float:
    """Measured torch matmul rate in FLOP/s: (n, n) @ (n, n) in `dtype` ('float32' or 'bfloat16')
    on the CPU with `threads` torch threads, the best of `repeats` (2 n^3 FLOPs a call). The limit
    of LLM forward passes, whose work is such matmuls. Needs torch."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        a = torch.randn(n, n, generator=g).to(getattr(torch, dtype))
        b = torch.randn(n, n, generator=g).to(getattr(torch, dtype))
        with torch.inference_mode():
            t = best_time(lambda: a @ b, repeats)
    finally:
        torch.set_num_threads(before)
    return 2 * n**3 / t


def layer_shapes(config: Any) -> list[tuple[int, int]]:
    """(in, out) of the linear maps of one decoder layer of a Llama-style causal LM config: q, k, v, o,
    gate, up, down (k and v of width kv_heads * head_dim)."""
    h, inter = int(config.hidden_size), int(config.intermediate_size)
    heads = int(config.num_attention_heads)
    kv = int(getattr(config, "num_key_value_heads", None) or heads) * int(getattr(config, "head_dim", None)
                                                                           or h // heads)
    return [(h, h), (h, kv), (h, kv), (h, h), (h, inter), (h, inter), (inter, h)]


def model_matmul_flops(shapes: Iterable[tuple[int, int]], tokens: int, dtype: str, threads: int,
                       repeats: int = 5) -> float:
    """Measured torch matmul rate in FLOP/s at a model's own shapes: x (tokens, k) @ W (k, n) for each
    (k, n) of `shapes` (one layer's linear maps, :func:`layer_shapes`), the whole set timed as one pass,
    in `dtype`, at `threads` threads. The better of two ways to use the threads: one matmul on all of
    them (torch's OpenMP) and `threads` workers on one thread each over shards of the tokens
    (:func:`binllm.threads.map_parallel`, as binllm's scoring and tuning run on a CPU). This is the
    limit an LLM stage of that shape can reach; 2 * tokens * k * n FLOPs a matmul."""
    import torch

    from binllm import threads as _threads

    shapes = list(shapes)
    g = torch.Generator().manual_seed(0)
    dt = getattr(torch, dtype)
    ws = [torch.randn(k, n, generator=g).to(dt) for k, n in shapes]
    xs = {k: torch.randn(tokens, k, generator=g).to(dt) for k, _ in shapes}
    flops = sum(2 * tokens * k * n for k, n in shapes)

    def one_pass(rows: slice) -> None:
        for (k, _), w in zip(shapes, ws):
            xs[k][rows] @ w

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        with torch.inference_mode():
            t_omp = best_time(lambda: one_pass(slice(None)), repeats)
            bounds = np.linspace(0, tokens, threads + 1).round().astype(int)
            parts = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
            t_workers = best_time(lambda: _threads.map_parallel(one_pass, parts, total=threads), repeats) \
                if threads > 1 else t_omp
    finally:
        torch.set_num_threads(before)
    return flops / min(t_omp, t_workers)
