"""The codes suite: binllm's kernels side by side with every installed peer.

Sections: sign packing (numpy ``packbits``, FAISS ``real_to_binary``), all-pairs
scores (torch bf16 matmul of the unpacked +-1 codes, numpy ``bitwise_count``,
FAISS ``hammings``, NumKong ``hammings_packed``, SimSIMD ``cdist(metric='hamming')``),
top-k (FAISS ``IndexBinaryFlat``, usearch exact Hamming search) and the code
text formats (Python and numpy routes). Each peer is first checked to give
binllm's result on the same data (:mod:`.peers`), then every route is timed
with 1 thread and with all threads, and each row is set against the limit that
bounds it: read bandwidth for packing, the popcount rate (and the output
writes) for scores and top-k, the object-creation floor for text lists
(:mod:`.machine`, :mod:`.report`).
"""
from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import binllm
from binllm.bench import machine, report
from binllm.bench.peers import Peers, check_equal, check_topk
from binllm.bench.report import Row, bound_by, timeit

PEERS = ("torch", "faiss", "numkong", "simsimd", "usearch")
COLUMNS = ["section", "d", "threads", "impl", "median_s", "spread_s", "repeats", "rate", "unit", "binllm_x",
           "frac_limit", "bound"]


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of one run.

    Args:
        pack_rows: float32 rows packed per width.
        all_queries, all_items: the all-pairs score matrix.
        topk_queries, topk_items, k: top-k search.
        text_rows: codes formatted and parsed.
        dims: code widths of packing, all-pairs and top-k.
        text_dims: code widths of the text section.
        slow_peer_queries: the slowest peers (numpy all-pairs, usearch top-k) are timed on this
            many queries at most (their rate per pair is what the table gives).
    """

    pack_rows: int = 1_000_000
    all_queries: int = 1_000
    all_items: int = 100_000
    topk_queries: int = 10_000
    topk_items: int = 100_000
    k: int = 10
    text_rows: int = 1_000_000
    dims: tuple[int, ...] = (32, 64, 128, 256)
    text_dims: tuple[int, ...] = (32, 256)
    slow_peer_queries: int = 200

    def __post_init__(self) -> None:
        for name in ("pack_rows", "all_queries", "all_items", "topk_queries", "topk_items", "k", "text_rows",
                     "slow_peer_queries"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.k > self.topk_items:
            raise ValueError(f"k must be <= topk_items; got k={self.k}, topk_items={self.topk_items}")
        for d in (*self.dims, *self.text_dims):
            if d < 8 or d % 8:
                raise ValueError(f"dims must be multiples of 8 (the peers take whole bytes); got {d}")


FULL = Sizes()
QUICK = Sizes(pack_rows=20_000, all_queries=100, all_items=5_000, topk_queries=200, topk_items=5_000,
              text_rows=20_000)


class _Suite:
    """State of one run: rows so far, limits, peers, thread counts, progress."""

    def __init__(self, sizes: Sizes, threads: Sequence[int], limits: machine.Limits, peers: Peers,
                 say: report.Say):
        self.sizes, self.threads, self.limits, self.peers, self.say = sizes, list(threads), limits, peers, say
        self.rows: list[Row] = []
        self.ceilings: dict[tuple[str, int, str], float] = {}  # limit rows so far, by (section, d, impl)
        self.rng = np.random.default_rng(0)
        self.torch: Any = peers.get("torch")
        self.faiss: Any = peers.get("faiss")

    def set_threads(self, t: int) -> None:
        binllm.set_num_threads(t)
        if self.torch is not None:
            self.torch.set_num_threads(t)
        if self.faiss is not None:
            self.faiss.omp_set_num_threads(t)

    def add(self, section: str, d: int, threads: int, impl: str, t: dict[str, float] | None, work: float,
            unit: str, ref: float | None = None, limits: Sequence[tuple[str, float | None]] = (),
            rate: float | None = None) -> float:
        """Appends a row (`work` units done per call, timed by `t`; or a given `rate` for a limit
        that was not timed here) and returns its rate: from the median call, or for a limit (an
        `impl` starting with 'limit:') from the fastest call, a ceiling, and never below the same
        limit at fewer threads (more threads can do what fewer did; a shared machine's noise can
        say otherwise)."""
        is_limit = impl.startswith("limit:")
        if rate is None:
            assert t is not None
            rate = work / (t["min"] if is_limit else t["median"])
        if is_limit:
            key = (section, d, impl)
            rate = self.ceilings[key] = max(rate, self.ceilings.get(key, 0.0))
        r: Row = {"section": section, "d": d, "threads": threads, "impl": impl, "rate": rate, "unit": unit}
        if t is not None:
            r.update(median_s=t["median"], spread_s=f"{t['min']:.4g}-{t['max']:.4g}", repeats=int(t["n"]))
        if ref is not None:
            r["binllm_x"] = ref / rate  # how many times faster binllm is than this route
        r.update(bound_by(rate, limits))
        self.rows.append(r)
        return rate

    def codes(self, n: int, d: int) -> np.ndarray:
        return binllm.pack_signs(self.rng.standard_normal((n, d), dtype=np.float32))


# ---------------------------------------------------------------- packing


def bench_pack(s: _Suite) -> None:
    n = s.sizes.pack_rows
    for d in s.sizes.dims:
        s.say(f"pack: {n:,} x {d} float32")
        x = s.rng.standard_normal((n, d), dtype=np.float32)
        x[x == 0] = 1.0  # faiss sets bit = x > 0, binllm x >= 0: without zeros both give the same bits
        ours = binllm.pack_signs(x)
        check_equal("numpy packbits(x >= 0)", f"sign packing d={d}", np.packbits(x >= 0, axis=1), ours)
        faiss = s.faiss
        fo = np.empty((n, d // 8), np.uint8)
        if faiss is not None:
            faiss.real_to_binary(n * d, faiss.swig_ptr(x), faiss.swig_ptr(fo))
            # faiss packs LSB-first; binllm MSB-first like numpy
            check_equal("faiss real_to_binary", f"sign packing d={d} (bits reordered MSB-first)",
                        np.packbits(np.unpackbits(fo, axis=1, bitorder="little"), axis=1), ours)
        gb = x.nbytes / 1e9
        for th in s.threads:
            s.set_threads(th)
            read = s.add("pack", d, th, "limit: read x once (numpy sum over the threads)",
                         timeit(machine.reader(x, th), repeats=7), gb, "GB/s read")
            lim = [("read bandwidth (same buffer)", read)]
            ours_rate = s.add("pack", d, th, "binllm pack_signs", timeit(lambda: binllm.pack_signs(x), repeats=7),
                              gb, "GB/s read", limits=lim)
            s.add("pack", d, th, "numpy packbits(x >= 0) (1 thread)",
                  timeit(lambda: np.packbits(x >= 0, axis=1), repeats=5), gb, "GB/s read", ours_rate, lim)
            if faiss is not None:
                s.add("pack", d, th, "faiss real_to_binary",
                      timeit(lambda: faiss.real_to_binary(n * d, faiss.swig_ptr(x), faiss.swig_ptr(fo)), repeats=5),
                      gb, "GB/s read", ours_rate, lim)


# ---------------------------------------------------------------- all pairs


def numpy_hamming_all(q: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Hamming distances of all pairs with numpy: XOR of whole words, ``bitwise_count``, sum;
    query rows in chunks so the (rows, m, words) temporary stays near 32 MiB."""
    nb = q.shape[1]
    w = np.uint64 if nb % 8 == 0 else np.uint32 if nb % 4 == 0 else np.uint8
    qv, iv = np.ascontiguousarray(q).view(w), np.ascontiguousarray(items).view(w)
    out = np.empty((q.shape[0], items.shape[0]), np.int32)
    step = max(1, (32 << 20) // max(1, items.shape[0] * qv.shape[1] * qv.itemsize))
    for r in range(0, q.shape[0], step):
        np.bitwise_count(qv[r:r + step, None, :] ^ iv[None, :, :]).sum(-1, dtype=np.int32, out=out[r:r + step])
    return out


def bench_all(s: _Suite) -> None:
    nq, m = s.sizes.all_queries, s.sizes.all_items
    n_slow = min(nq, s.sizes.slow_peer_queries)
    torch, faiss = s.torch, s.faiss
    nk, sims = s.peers.get("numkong"), s.peers.get("simsimd")
    for d in s.sizes.dims:
        s.say(f"all-pairs: {nq:,} x {m:,}, d={d}")
        q, it = s.codes(nq, d), s.codes(m, d)
        ours = binllm.dot_all(q, it, d)
        ham = binllm.hamming_all(q, it, d)
        check_equal("binllm dot_all int16", f"all-pairs d={d}", binllm.dot_all(q, it, d, out_dtype="int16"), ours)
        check_equal("binllm hamming_all", f"all-pairs d={d} (d - 2 hamming)", d - 2 * ham.astype(np.int64), ours)
        has_np = hasattr(np, "bitwise_count")
        if has_np:
            check_equal("numpy bitwise_count", f"all-pairs Hamming d={d}", numpy_hamming_all(q[:n_slow], it),
                        ham[:n_slow])
        tq = ti = None
        if torch is not None:
            tq = torch.from_numpy(binllm.unpack_signs(q, d)).to(torch.bfloat16)
            ti = torch.from_numpy(binllm.unpack_signs(it, d)).to(torch.bfloat16)
            check_equal("torch bf16 matmul", f"all-pairs d={d}", (tq @ ti.T).float().numpy(), ours)
        fd = np.empty((nq, m), np.int32)
        if faiss is not None:
            faiss.hammings(faiss.swig_ptr(q), faiss.swig_ptr(it), nq, m, d // 8, faiss.swig_ptr(fd))
            check_equal("faiss hammings", f"all-pairs Hamming d={d}", fd, ham)
        packed = nk_out = None
        if nk is not None:
            packed = nk.hammings_pack(it, dtype="uint1")
            nk_out = nk.empty((nq, m), dtype="uint32")
            nk.hammings_packed(q, packed, out=nk_out)
            check_equal("numkong hammings_packed", f"all-pairs Hamming d={d}", nk_out, ham)
        sim_out = np.empty((nq, m), np.uint32)
        if sims is not None:
            sims.cdist(q, it, metric="hamming", dtype="bin8", out=sim_out, out_dtype="uint32")
            check_equal("simsimd cdist(metric='hamming')", f"all-pairs Hamming d={d}", sim_out, ham)
        del ours, ham
        pairs = nq * m / 1e9
        unit = "1e9 pairs/s"
        buf32 = np.empty((nq, m), np.int32)
        buf32.fill(0)  # touched once, so reuse pays no page faults (as for every peer writing into a buffer)
        for th in s.threads:
            s.set_threads(th)
            pop = s.add("all-pairs", d, th, "limit: popcount rate x 64/d (machine facts)", None, pairs,
                        unit, rate=s.limits.popcount_pairs_per_s(d, th) / 1e9)
            w32 = s.add("all-pairs", d, th, "limit: write int32, fresh (np.empty + memset over the threads)",
                        timeit(machine.writer((nq, m), np.int32, th)), pairs, unit)
            w16 = s.add("all-pairs", d, th, "limit: write int16, fresh (np.empty + memset over the threads)",
                        timeit(machine.writer((nq, m), np.int16, th)), pairs, unit)
            wre = s.add("all-pairs", d, th, "limit: write int32, reused buffer (memset over the threads)",
                        timeit(machine.writer((nq, m), np.int32, th, into=buf32)), pairs, unit)
            popcount = ("popcount rate", pop)
            fresh32 = [popcount, ("int32 output writes", w32)]
            fresh16 = [popcount, ("int16 output writes", w16)]
            reused = [popcount, ("int32 writes, reused buffer", wre)]
            r32 = s.add("all-pairs", d, th, "binllm dot_all int32", timeit(lambda: binllm.dot_all(q, it, d)),
                        pairs, unit, limits=fresh32)
            r16 = s.add("all-pairs", d, th, "binllm dot_all int16",
                        timeit(lambda: binllm.dot_all(q, it, d, out_dtype="int16")), pairs, unit, limits=fresh16)
            rre = s.add("all-pairs", d, th, "binllm dot_all int32 into a reused buffer (out=)",
                        timeit(lambda: binllm.dot_all(q, it, d, out=buf32)), pairs, unit, limits=reused)
            rh = s.add("all-pairs", d, th, "binllm hamming_all int32 into a reused buffer (out=)",
                       timeit(lambda: binllm.hamming_all(q, it, d, out=buf32)), pairs, unit, limits=reused)
            best = max(r32, r16, rre, rh)
            if tq is not None and ti is not None:
                # a matmul, not popcounts: of the limits measured here only its output writes bound it
                s.add("all-pairs", d, th, "torch bf16 matmul of unpacked +-1", timeit(lambda: tq @ ti.T, budget_s=30),
                      pairs, unit, best, [("bf16 output writes", w16)])
            if has_np and th == 1:
                qs = q[:n_slow]
                s.add("all-pairs", d, th, f"numpy bitwise_count of XOR words ({n_slow:,} queries, 1 thread)",
                      timeit(lambda: numpy_hamming_all(qs, it), repeats=3, budget_s=20), n_slow * m / 1e9, unit,
                      best, fresh32)
            if faiss is not None:
                s.add("all-pairs", d, th, "faiss.hammings (into a reused buffer)",
                      timeit(lambda: faiss.hammings(faiss.swig_ptr(q), faiss.swig_ptr(it), nq, m, d // 8,
                                                    faiss.swig_ptr(fd)), budget_s=30), pairs, unit, best, reused)
            if nk is not None:
                run_nk = machine.split_rows(
                    lambda a, b: nk.hammings_packed(q, packed, out=nk_out, start_row=a, end_row=b), nq, th)
                s.add("all-pairs", d, th, f"numkong hammings_packed (items pre-packed, reused buffer, rows over "
                      f"{th} Python thread(s))", timeit(run_nk, budget_s=30), pairs, unit, best, reused)
            if sims is not None:
                s.add("all-pairs", d, th, "simsimd cdist(metric='hamming', dtype='bin8', reused buffer)",
                      timeit(lambda: sims.cdist(q, it, metric="hamming", dtype="bin8", out=sim_out,
                                                out_dtype="uint32", threads=th), budget_s=30),
                      pairs, unit, best, reused)


# ---------------------------------------------------------------- top-k


def bench_topk(s: _Suite) -> None:
    nq, m, k = s.sizes.topk_queries, s.sizes.topk_items, s.sizes.k
    n_slow = min(nq, s.sizes.slow_peer_queries)
    faiss, us = s.faiss, s.peers.get("usearch")
    for d in s.sizes.dims:
        s.say(f"top-k: {nq:,} x {m:,}, d={d}, k={k}")
        q, it = s.codes(nq, d), s.codes(m, d)
        sc, _ = binllm.topk(q, it, d, k)

        def rescore(idx: np.ndarray, q: np.ndarray = q, it: np.ndarray = it, d: int = d) -> np.ndarray:
            rows = np.repeat(q[: idx.shape[0]], idx.shape[1], axis=0)
            return binllm.dot_rows(rows, it[idx.ravel()], d).reshape(idx.shape)

        index = None
        if faiss is not None:
            index = faiss.IndexBinaryFlat(d)
            index.add(it)
            dist, idx = index.search(q, k)
            check_topk("faiss IndexBinaryFlat", f"top-{k} d={d}", d - 2 * dist.astype(np.int64), idx, sc, m, rescore)
        if us is not None:
            res = us.search(it, q[:n_slow], k, us.MetricKind.Hamming, exact=True, dtype=us.ScalarKind.B1)
            check_topk("usearch search(exact=True, Hamming)", f"top-{k} d={d}",
                       d - 2 * np.asarray(res.distances).astype(np.int64), res.keys, sc[:n_slow], m, rescore)
        pairs = nq * m / 1e9
        unit = "1e9 pairs/s"
        for th in s.threads:
            s.set_threads(th)
            pop = s.add("top-k", d, th, "limit: popcount rate x 64/d (machine facts)", None, pairs, unit,
                        rate=s.limits.popcount_pairs_per_s(d, th) / 1e9)
            lim = [("popcount rate", pop)]
            ours = s.add("top-k", d, th, f"binllm topk k={k}", timeit(lambda: binllm.topk(q, it, d, k)), pairs, unit,
                         limits=lim)
            if index is not None:
                s.add("top-k", d, th, f"faiss IndexBinaryFlat k={k}", timeit(lambda: index.search(q, k), budget_s=30),
                      pairs, unit, ours, lim)
            if us is not None:
                qs = q[:n_slow]
                s.add("top-k", d, th, f"usearch search(exact=True, Hamming) k={k} ({n_slow:,} queries)",
                      timeit(lambda: us.search(it, qs, k, us.MetricKind.Hamming, exact=True, threads=th,
                                               dtype=us.ScalarKind.B1), budget_s=30),
                      n_slow * m / 1e9, unit, ours, lim)


# ---------------------------------------------------------------- text


def lut_dotted(codes: np.ndarray) -> list[str]:
    """numpy route: a 4-byte table entry per byte value, NUL-padded, then strip and split."""
    n, nb = codes.shape
    tab = np.zeros((2, 256, 4), np.uint8)
    for v in range(256):
        for last, sep in ((0, "."), (1, "\n")):
            b = (str(v) + sep).encode()
            tab[last, v, : len(b)] = np.frombuffer(b, np.uint8)
    sel = np.zeros(nb, np.int64)
    sel[-1] = 1
    buf = tab[sel[None, :], codes].tobytes().replace(b"\0", b"")
    return buf.decode().split("\n")[:-1]


def bench_text(s: _Suite) -> None:
    n = s.sizes.text_rows
    for d in s.sizes.text_dims:
        s.say(f"text: {n:,} codes, d={d}")
        c = s.codes(n, d)
        dotted, bits = binllm.to_dotted(c, d), binllm.to_bits(c, d)
        S_dot, S_bits = binllm.to_dotted(c, d, out="array"), binllm.to_bits(c, d, out="array")

        def py_dot(c: np.ndarray = c) -> list[str]:
            return [".".join(map(str, r)) for r in c.tolist()]

        def py_bits(c: np.ndarray = c, d: int = d) -> list[str]:
            return [format(int.from_bytes(bytes(r), "big"), f"0{8 * len(r)}b")[:d] for r in c.tolist()]

        def np_bits(c: np.ndarray = c, d: int = d) -> list[str]:
            return (np.unpackbits(c, axis=1, count=d) + 48).view(f"S{d}").ravel().astype("U").tolist()

        def np_dot(c: np.ndarray = c) -> list[str]:
            return lut_dotted(c)

        def inet_dot(raw: bytes = c.tobytes()) -> list[str]:
            return [socket.inet_ntoa(raw[i:i + 4]) for i in range(0, len(raw), 4)]

        routes_dot: dict[str, Callable[[], list[str]]] = {"python '.'.join(map(str, row))": py_dot,
                                                            "numpy LUT + split": np_dot}
        if d == 32:
            routes_dot["socket.inet_ntoa"] = inet_dot
        routes_bits: dict[str, Callable[[], list[str]]] = {"python format(int, '0{d}b')": py_bits,
                                                           "numpy unpackbits + view + astype(U)": np_bits}
        for name, f in routes_dot.items():
            if f() != dotted:
                raise RuntimeError(f"{name} disagrees with binllm on dotted text d={d}")
        for name, f in routes_bits.items():
            if f() != bits:
                raise RuntimeError(f"{name} disagrees with binllm on bit text d={d}")

        def np_parse_dot(dotted: list[str] = dotted, n: int = n) -> np.ndarray:
            return np.fromstring(".".join(dotted), dtype=np.int64, sep=".").astype(np.uint8).reshape(n, -1)

        def np_parse_bits(bits: list[str] = bits, n: int = n, d: int = d) -> np.ndarray:
            return np.packbits((np.frombuffer("".join(bits).encode("ascii"), np.uint8) - 48).reshape(n, d), axis=1)

        check_equal("numpy fromstring", f"dotted parse d={d}", np_parse_dot(), c)
        check_equal("numpy frombuffer + packbits", f"bit parse d={d}", np_parse_bits(), c)
        mrows = n / 1e6
        unit = "1e6 rows/s"
        for th in s.threads:
            s.set_threads(th)
            floor_dot = timeit(lambda: S_dot.tolist())
            floor_bits = timeit(lambda: S_bits.tolist())
            for style, floor, routes, ours_list, ours_arr, np_parse, ours_parse in (
                ("dotted", floor_dot, routes_dot, lambda: binllm.to_dotted(c, d),
                 lambda: binllm.to_dotted(c, d, out="array"), np_parse_dot, lambda: binllm.from_dotted(dotted, d)),
                ("bits", floor_bits, routes_bits, lambda: binllm.to_bits(c, d),
                 lambda: binllm.to_bits(c, d, out="array"), np_parse_bits, lambda: binllm.from_bits(bits, d)),
            ):
                sec = f"text {style}"
                fl = s.add(sec, d, th, "limit: create the n str objects (S.tolist(), 1 thread)", floor, mrows, unit)
                lim = [("str object creation", fl)]
                ours = s.add(sec, d, th, "binllm format, out='list'", timeit(ours_list), mrows, unit, limits=lim)
                s.add(sec, d, th, "binllm format, out='array'", timeit(ours_arr), mrows, unit)
                for name, f in routes.items():
                    s.add(sec, d, th, name, timeit(f, repeats=3, budget_s=20), mrows, unit, ours, lim)
                p = s.add(sec + " parse", d, th, "binllm parse (strict)", timeit(ours_parse), mrows, unit)
                s.add(sec + " parse", d, th, "numpy join + fromstring/frombuffer (no validation)", timeit(np_parse),
                      mrows, unit, p)


# ---------------------------------------------------------------- run


def plot(rows: Sequence[Row], path: Path) -> Path | None:
    """Bars of each route's rate per width, one panel per section, at the largest thread count;
    the limits drawn as black ticks over their width's bars."""
    plt = report.pyplot()
    sections = [sec for sec in ("pack", "all-pairs", "top-k", "text dotted") if any(r["section"] == sec for r in rows)]
    if plt is None or not sections:
        return None
    th = max(r["threads"] for r in rows)
    fig, axes = plt.subplots(1, len(sections), figsize=(5.5 * len(sections), 6.5), squeeze=False)
    for ax, sec in zip(axes[0], sections):
        sel = [r for r in rows if r["section"] == sec and r["threads"] == th]
        bars = [r for r in sel if not r["impl"].startswith("limit:")]
        impls = list(dict.fromkeys(r["impl"] for r in bars))
        dims = sorted({r["d"] for r in sel})
        w = 0.8 / max(len(impls), 1)
        for j, impl in enumerate(impls):
            vals = [next((r["rate"] for r in bars if r["impl"] == impl and r["d"] == d), 0) for d in dims]
            ax.bar([x + j * w for x in range(len(dims))], vals, w, label=impl)
        for x, d in enumerate(dims):
            for r in sel:
                if r["impl"].startswith("limit:") and r["d"] == d:
                    ax.hlines(r["rate"], x - w / 2, x - w / 2 + 0.8, colors="black", linewidth=0.8)
        ax.set_xticks([x + 0.4 - w / 2 for x in range(len(dims))], [f"d={d}" for d in dims])
        ax.set_title(f"{sec} ({th} threads; black: limits)", fontsize=9)
        ax.set_ylabel(sel[0]["unit"] if sel else "")
        ax.set_yscale("log")
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    fig.tight_layout()
    return report.save_figure(fig, path)


def run(out_dir: str | Path, quick: bool = False, sizes: Sizes | None = None, threads: Sequence[int] | None = None,
        sections: Sequence[str] = ("pack", "all", "topk", "text"), name: str | None = None,
        progress: bool = True, read_bytes: int | None = None) -> Path:
    """Runs the codes suite and writes ``out_dir/NAME.md|csv|png`` (NAME: ``codes`` or ``codes_quick``);
    returns the .md path.

    Args:
        out_dir: output folder (created).
        quick: the small sizes (:data:`QUICK`) instead of :data:`FULL`; `sizes` overrides both.
        threads: thread counts to time (default: 1 and every usable CPU).
        sections: any of 'pack', 'all', 'topk', 'text'.
        read_bytes: buffer size of the machine's read bandwidth (default: twice the last-level cache).

    Raises:
        PeerMismatch: an installed peer gave another result than binllm.
    """
    unknown = set(sections) - {"pack", "all", "topk", "text"}
    if unknown:
        raise ValueError(f"sections must be among pack, all, topk, text; got {sorted(unknown)}")
    sizes = sizes or (QUICK if quick else FULL)
    name = name or ("codes_quick" if quick else "codes")
    threads = sorted(set(threads or {1, machine.hardware_threads()}))
    say = report.Say("codes", progress)
    limits, facts = machine.start(say, threads, read_bytes=read_bytes)
    peers = Peers(PEERS)
    for note in peers.notes:
        say(note)
    s = _Suite(sizes, threads, limits, peers, say)
    torch, faiss = s.torch, s.faiss
    saved = (binllm.num_threads(), torch.get_num_threads() if torch is not None else None,
             faiss.omp_get_max_threads() if faiss is not None else None)
    try:
        for key, fn in (("pack", bench_pack), ("all", bench_all), ("topk", bench_topk), ("text", bench_text)):
            if key in sections:
                fn(s)
    finally:
        binllm.set_num_threads(saved[0])
        if torch is not None:
            torch.set_num_threads(saved[1])
        if faiss is not None:
            faiss.omp_set_num_threads(saved[2])
    z = sizes
    notes = f"""
`binllm bench codes{' --quick' if quick else ''}`. Sizes: packing {z.pack_rows:,} float32 rows; all-pairs
{z.all_queries:,} queries x {z.all_items:,} items; top-k {z.topk_queries:,} x {z.topk_items:,}, k={z.k}; text
{z.text_rows:,} codes; the slowest peers (numpy all-pairs, usearch) on {min(z.slow_peer_queries, z.all_queries):,} /
{min(z.slow_peer_queries, z.topk_queries):,} queries. `rate` is throughput (higher is better); `binllm_x` =
binllm's rate / this row's rate (for all-pairs, binllm's best route). Medians of >= 3 (usually 5-7) calls after
a warm-up; spread = min-max. Every peer was first checked to give binllm's result on the same data.
`frac_limit` = rate / the rate the tightest limit allows, named in `bound`: the read of the same buffer
(packing), the popcount rate of the machine facts x 64/d and the output writes measured here (all-pairs),
the popcount rate (top-k), creating the Python str objects (text lists). Rows named `limit:` are those
limits, each from its fastest call (a ceiling) and never below the same limit at fewer threads. Rows
without `frac_limit` have no measured limit that bounds them closely.
""" + "".join(f"\nSkipped: {n}." for n in peers.notes)
    out = Path(out_dir)
    path = report.write_table(out, name, s.rows, COLUMNS, facts, notes)
    plot(s.rows, out / f"{name}.png")
    return path
