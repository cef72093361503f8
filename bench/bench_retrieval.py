"""Candidate retrieval with exclusion lists: binllm.cf.retrieval.retrieve_codes vs FAISS IndexBinaryFlat
+ the same numpy exclusion filter, every user of a synthetic code book, top-k.

Each implementation runs in its own subprocess (one at a time) so that ``ru_maxrss`` is its own
peak; inputs are written to .npy files by the parent and loaded whole by the child. FAISS runs
on a subset of the users (``--faiss-users``); its per-user rate is extrapolated to all users and
marked as such. binllm also runs on that same subset, for a measured like-for-like ratio.

    python bench/bench_retrieval.py            # 1M users x 1M items, 64-bit codes, 20 exclusions, top-10
    python bench/bench_retrieval.py --quick    # 20k users x 100k items (a smoke test of the script)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _status_bytes(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _rss_bytes() -> int:
    return _status_bytes("VmRSS")


def _faiss_retrieve(index, queries: np.ndarray, d: int, n: int, off: np.ndarray, ex: np.ndarray,
                    chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """FAISS Hamming search for n + max exclusions, then the same vectorised filter as binllm."""
    from binllm.cf.retrieval import filter_excluded

    q, m = len(queries), index.ntotal
    scores = np.empty((q, n), np.int32)
    idx = np.empty((q, n), np.int64)
    counts = np.diff(off)
    for a in range(0, q, chunk):
        b = min(q, a + chunk)
        kk = min(m, n + int(counts[a:b].max()))
        dist, ind = index.search(queries[a:b], kk)
        s = (d - 2 * dist).astype(np.int32)
        o = off[a:b + 1] - off[a]
        scores[a:b], idx[a:b] = filter_excluded(s, ind, o, ex[off[a]:off[b]], n, m)
    return scores, idx


def child(args: argparse.Namespace) -> None:
    """Runs one implementation on the saved inputs; prints one JSON line."""
    rss0 = _rss_bytes()
    folder = Path(args.data)
    users = np.load(folder / "users.npy")
    items = np.load(folder / "items.npy")
    off = np.load(folder / "excl_offsets.npy")
    ex = np.load(folder / "excl_items.npy")
    q_all = len(users)
    if args.child_users < q_all:
        users = np.ascontiguousarray(users[:args.child_users])
        off = off[:args.child_users + 1]
        ex = ex[:off[-1]]
    rss_inputs = _rss_bytes()
    q = len(users)
    if args.child in ("binllm", "binllm-ties"):
        import binllm
        from binllm.cf.retrieval import retrieve_codes

        binllm.set_num_threads(args.threads)
        # binllm-ties: equal scores ordered by a given item order (binllm's lists pass item popularity)
        ties = np.random.default_rng(1).permutation(len(items)) if args.child == "binllm-ties" else None
        run = lambda: retrieve_codes(users, items, args.d, args.k, off, ex, chunk=args.chunk,  # noqa: E731
                                     tie_order=ties)
    else:
        import faiss

        faiss.omp_set_num_threads(args.threads)
        index = faiss.IndexBinaryFlat(args.d)
        index.add(items)
        run = lambda: _faiss_retrieve(index, users, args.d, args.k, off, ex, args.chunk)  # noqa: E731
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        s, i = run()
        times.append(time.perf_counter() - t)
        del s, i
    s, i = run() if args.check_out else (None, None)
    if args.check_out:
        np.save(args.check_out, np.stack([s.astype(np.int64), i]))
    # VmHWM is this process image's own peak; ru_maxrss also keeps the RSS the process had before
    # exec (the parent's, at fork time), which is why the parent stays small until the children are done
    print(json.dumps({"impl": args.child, "users": q, "times": times, "rss_start": rss0, "rss_inputs": rss_inputs,
                      "peak": _status_bytes("VmHWM"),
                      "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def generate(args: argparse.Namespace) -> None:
    """Writes the synthetic inputs (a child too, so the parent stays small before it forks the runs)."""
    nb, folder = (args.d + 7) // 8, Path(args.data)
    rng = np.random.default_rng(0)
    # random bits; d is a multiple of 8 here, else the tail bits would have to be cleared
    np.save(folder / "users.npy", rng.integers(0, 256, (args.users, nb), dtype=np.uint8))
    np.save(folder / "items.npy", rng.integers(0, 256, (args.items, nb), dtype=np.uint8))
    ex = np.sort(rng.integers(0, args.items, (args.users, args.excluded), dtype=np.int32), axis=1)
    np.save(folder / "excl_items.npy", ex.reshape(-1))
    np.save(folder / "excl_offsets.npy", np.arange(args.users + 1, dtype=np.int64) * args.excluded)


def _run_child(impl: str, data: Path, users: int, args: argparse.Namespace, repeats: int,
               check_out: str = "", threads: int = 0) -> dict:
    threads = threads or args.threads
    cmd = [sys.executable, __file__, "--child", impl, "--data", str(data), "--child-users", str(users),
           "--d", str(args.d), "--k", str(args.k), "--threads", str(threads), "--chunk", str(args.chunk),
           "--repeats", str(repeats)] + (["--check-out", check_out] if check_out else [])
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{impl} child failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--excluded", type=int, default=20, help="random excluded items per user")
    ap.add_argument("--faiss-users", type=int, default=20_000, help="users FAISS (and binllm, for the ratio) run on")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=8192, help="users per kernel call")
    ap.add_argument("--name", default=None, help="results file name (default retrieval / retrieval_quick)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs on the subset (the full run is timed once)")
    ap.add_argument("--quick", action="store_true", help="20k users x 100k items, FAISS on 2k users")
    ap.add_argument("--child", choices=["binllm", "binllm-ties", "faiss", "generate"], help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--child-users", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--check-out", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "generate":
        generate(args)
        return
    if args.child:
        child(args)
        return
    if args.quick:
        args.users, args.items, args.faiss_users = 20_000, 100_000, 2_000
    from common import environment, write_table

    if args.d % 8:
        raise SystemExit("--d must be a multiple of 8 for the synthetic codes")
    nb = (args.d + 7) // 8
    with tempfile.TemporaryDirectory(prefix="bench_retrieval.") as tmp:
        data = Path(tmp)
        subprocess.run([sys.executable, __file__, "--child", "generate", "--data", tmp, "--users", str(args.users),
                        "--items", str(args.items), "--d", str(args.d), "--excluded", str(args.excluded)], check=True)
        # 1. timing (first, while this process is small: see child())
        fu = min(args.faiss_users, args.users)
        res_b_sub = _run_child("binllm", data, fu, args, args.repeats)
        res_f_sub = _run_child("faiss", data, fu, args, args.repeats)
        res_t_sub = _run_child("binllm-ties", data, fu, args, args.repeats)
        res_b_all = _run_child("binllm", data, args.users, args, 1)
        # one thread each: OpenMP's spinning barriers make FAISS collapse when the cores are shared
        # with other work, so the single-thread rates show the kernels without that effect
        res_b_1 = _run_child("binllm", data, fu, args, args.repeats, threads=1) if args.threads > 1 else None
        res_f_1 = _run_child("faiss", data, fu, args, args.repeats, threads=1) if args.threads > 1 else None

        # 2. agreement on a few hundred users: binllm vs a numpy oracle (exact order), FAISS (exact scores)
        nchk = min(300, args.users)
        _run_child("binllm", data, nchk, args, 1, str(data / "chk_binllm.npy"))
        _run_child("faiss", data, nchk, args, 1, str(data / "chk_faiss.npy"))
        sb, ib = np.load(data / "chk_binllm.npy")
        sf, _ = np.load(data / "chk_faiss.npy")
        import binllm

        u = np.load(data / "users.npy")[:nchk]
        it = np.load(data / "items.npy")
        exs = np.load(data / "excl_items.npy")[:nchk * args.excluded].reshape(nchk, -1)
        full = binllm.dot_all(u, it, args.d).astype(np.int64)
        np.put_along_axis(full, exs.astype(np.int64), -(1 << 40), 1)  # below any score, and negatable
        want = np.lexsort((np.broadcast_to(np.arange(len(it)), full.shape), -full), axis=1)[:, :args.k]
        if not (np.array_equal(ib, want) and np.array_equal(sb, np.take_along_axis(full, want, 1))):
            raise SystemExit("binllm retrieval disagrees with the numpy oracle")
        if not np.array_equal(sb, sf):
            raise SystemExit("FAISS + filter scores disagree with binllm")
        del full, u, it
        print(f"agreement: {nchk} users, binllm == numpy oracle (order), FAISS scores == binllm", flush=True)

    med = lambda r: float(np.median(r["times"]))  # noqa: E731
    codebook = (args.users + args.items) * nb
    out_bytes = args.users * args.k * (4 + 8)
    excl_bytes = args.users * args.excluded * 4 + (args.users + 1) * 8
    rate_b_sub, rate_f_sub = fu / med(res_b_sub), fu / med(res_f_sub)
    rate_b_all = args.users / med(res_b_all)
    faiss_all_s = args.users / rate_f_sub
    work = res_b_all["peak"] - res_b_all["rss_start"] - excl_bytes
    rows = [
        {"impl": "binllm retrieve_codes", "users": fu, "seconds": med(res_b_sub), "users_per_s": rate_b_sub,
         "pairs_per_s": rate_b_sub * args.items, "speedup_vs_faiss": rate_b_sub / rate_f_sub,
         "note": f"measured, median of {len(res_b_sub['times'])}"},
        {"impl": "binllm retrieve_codes, ties by a given item order (tie_order)", "users": fu,
         "seconds": med(res_t_sub), "users_per_s": fu / med(res_t_sub), "pairs_per_s": fu / med(res_t_sub) * args.items,
         "speedup_vs_faiss": fu / med(res_t_sub) / rate_f_sub,
         "note": f"measured, median of {len(res_t_sub['times'])}; as binllm's lists run (ties by popularity)"},
        {"impl": "faiss IndexBinaryFlat + numpy filter", "users": fu, "seconds": med(res_f_sub),
         "users_per_s": rate_f_sub, "pairs_per_s": rate_f_sub * args.items, "speedup_vs_faiss": 1.0,
         "note": f"measured, median of {len(res_f_sub['times'])}"},
        {"impl": "binllm retrieve_codes", "users": args.users, "seconds": med(res_b_all), "users_per_s": rate_b_all,
         "pairs_per_s": rate_b_all * args.items, "speedup_vs_faiss": faiss_all_s / med(res_b_all),
         "note": "measured, 1 run; speedup vs the FAISS row below"},
        {"impl": "faiss IndexBinaryFlat + numpy filter", "users": args.users, "seconds": faiss_all_s,
         "users_per_s": rate_f_sub, "pairs_per_s": rate_f_sub * args.items, "speedup_vs_faiss": 1.0,
         "note": f"EXTRAPOLATED from {fu} users (per-user rate x {args.users})" if fu < args.users else "measured"},
    ]
    if res_b_1 is not None and res_f_1 is not None:
        r1b, r1f = fu / med(res_b_1), fu / med(res_f_1)
        rows += [
            {"impl": "binllm retrieve_codes, 1 thread", "users": fu, "seconds": med(res_b_1), "users_per_s": r1b,
             "pairs_per_s": r1b * args.items, "speedup_vs_faiss": r1b / r1f, "note": "measured; vs FAISS 1 thread"},
            {"impl": "faiss IndexBinaryFlat + numpy filter, 1 thread", "users": fu, "seconds": med(res_f_1),
             "users_per_s": r1f, "pairs_per_s": r1f * args.items, "speedup_vs_faiss": 1.0, "note": "measured"}]
    mb = 1 / 2**20
    notes = f"""
{args.users:,} users x {args.items:,} items, {args.d}-bit random codes, {args.excluded} random excluded items per
user (CSR int32), top-{args.k}, {args.threads} threads, users in chunks of {args.chunk}. Both implementations ask for
k + (most exclusions in the chunk) items and drop the excluded ones with the same vectorised numpy filter
(`binllm.cf.retrieval.filter_excluded`); they differ in the kernel. Agreement checked (after the timed runs) on
{nchk} users (binllm order == numpy oracle, FAISS scores == binllm scores; FAISS orders ties its own way).

Peak memory of the binllm run over all users (own subprocess, VmHWM; `ru_maxrss` {res_b_all['ru_maxrss'] * mb:.1f} MiB):
{res_b_all['peak'] * mb:.1f} MiB;
interpreter + libraries before loading inputs {res_b_all['rss_start'] * mb:.1f} MiB; exclusion lists
{excl_bytes * mb:.1f} MiB (input, not counted below); code book {codebook * mb:.1f} MiB; output
(int32 scores + int64 items) {out_bytes * mb:.1f} MiB. Working peak = peak - interpreter - exclusion lists =
{work * mb:.1f} MiB = **{work / (codebook + out_bytes):.2f}x** (code book + output); target <= 1.5x.
Command: `python {' '.join(sys.argv)}`.
"""
    cols = ["impl", "users", "seconds", "users_per_s", "pairs_per_s", "speedup_vs_faiss", "note"]
    name = args.name or ("retrieval_quick" if args.quick else "retrieval")
    env = environment()
    env["memory_mib"] = {"peak": res_b_all["peak"] * mb, "interpreter": res_b_all["rss_start"] * mb,
                         "exclusions": excl_bytes * mb, "codebook": codebook * mb, "output": out_bytes * mb,
                         "ratio_working_over_codebook_plus_output": work / (codebook + out_bytes),
                         "faiss_subset_peak": res_f_sub["peak"] * mb}
    path = write_table(name, rows, cols, env, notes)
    print(path.read_text())


if __name__ == "__main__":
    main()
