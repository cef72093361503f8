"""Stage speed when the CPU is shared: each pipeline stage timed quiet and next to
two busy processes, with torch's default threads ("before") and with the
per-stage policy of binllm.threads ("after"), side by side in one run.

Stages: the hash model (a few epochs on the embedded ML-100K), a data-prepare
pass (ML-100K protocol), Yes/No scoring of prompts with the embedded SmolLM2,
and a binllm top-k call. The busy processes are spawned and killed by this
script; each also exits on its own after a deadline, so none outlives it.
Targets: busy <= 2x quiet for every stage under the policy; the policy's quiet
time no worse than before by more than 10%.

Writes bench/results/contention.md/.csv (contention_quick with --quick).

    python bench/bench_contention.py [--quick] [--repeats N]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import binllm  # noqa: E402
from binllm import data, hashing, threads  # noqa: E402

from common import environment, write_table  # noqa: E402

BUSY_SRC = ("import time\n"
            "end = time.monotonic() + {limit}\n"
            "while time.monotonic() < end:\n"
            "    for _ in range(200000):\n"
            "        pass\n")


@contextlib.contextmanager
def busy(n: int, limit_s: float) -> Iterator[None]:
    """`n` processes spinning on a core each, for at most `limit_s` seconds (they exit by themselves)."""
    procs = [subprocess.Popen([sys.executable, "-c", BUSY_SRC.format(limit=limit_s)]) for _ in range(n)]
    time.sleep(0.3)  # let them reach their loop
    try:
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def timed(fn: Callable[[], float], repeats: int, warmup: bool) -> float:
    """Median seconds per work unit of `repeats` calls (`fn` returns its units done), after an
    optional untimed warm-up call."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        units = fn()
        times.append((time.perf_counter() - t) / units)
    return statistics.median(times)


class _Budget(Exception):
    pass


def make_stages(quick: bool) -> dict[str, tuple[str, Callable[[], float]]]:
    """name -> (thread-stage kind, callable returning its work units). The hash stage reports
    seconds per epoch and stops at a wall budget: with torch's default threads on a shared CPU
    one epoch can take tens of seconds."""
    import torch

    from binllm import scoring
    from binllm.prompts import PromptBuilder, PromptConfig

    prep = data.prepare(data.read_ml100k(), "ml-100k")
    cfg = hashing.HashConfig(max_epochs=2 if quick else 8, patience=10**6)
    budget_s = 20.0 if quick else 120.0

    def hash_stage() -> float:
        done = []
        start = time.perf_counter()

        def on_epoch(rec: dict) -> None:
            done.append(rec)
            if time.perf_counter() - start > budget_s:
                raise _Budget

        try:
            hashing.train(prep, cfg, None, progress=False, log=False, on_epoch=on_epoch)
        except _Budget:
            pass
        return len(done)

    def data_stage() -> float:
        data.prepare(data.read_ml100k(), "ml-100k")
        return 1

    lm, tok = scoring.load_llm(progress=False)
    scorer = scoring.Scorer(lm, tok, batch_size=8)
    rows = np.flatnonzero(prep.mask("test"))[: 8 if quick else 24]
    prompts, _ = PromptBuilder(PromptConfig(kind="text"), prep.titles).for_rows(prep, rows)

    def llm_stage() -> float:
        scorer.score(prompts)
        return 1

    rng = np.random.default_rng(0)
    n_q, n_i = (1000, 50_000) if quick else (4000, 200_000)
    q = binllm.pack_signs(rng.standard_normal((n_q, 32)).astype(np.float32))
    items = binllm.pack_signs(rng.standard_normal((n_i, 32)).astype(np.float32))

    def kernels_stage() -> float:
        binllm.topk(q, items, 32, k=10)
        return 1

    torch.manual_seed(0)
    return {f"hash model (ML-100K, s/epoch, <= {cfg.max_epochs} epochs)": ("hash", hash_stage),
            "data prepare (ML-100K)": ("data", data_stage),
            f"LLM scoring ({len(prompts)} prompts, SmolLM2)": ("llm", llm_stage),
            f"binllm topk ({n_q}x{n_i:,}, d=32, k=10)": ("kernels", kernels_stage)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller stages, 1 repeat: checks the script works")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per cell (default 3, quick 1)")
    ap.add_argument("--busy", type=int, default=2, help="busy processes next to the stage (default 2)")
    args = ap.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    import torch

    default_torch = torch.get_num_threads()  # what torch picks with no policy: every core
    stages = make_stages(args.quick)
    variants = {"before (torch default threads)": str(default_torch), "after (binllm.threads policy)": None}
    rows = []
    for name, (kind, fn) in stages.items():
        res: dict[str, dict[str, float]] = {}
        for vname, spec in variants.items():
            threads.set_override(spec)  # "before": every stage kind at torch's default count
            try:
                with threads.stage(kind):
                    n_torch, n_core = torch.get_num_threads(), binllm.num_threads()
                    warm = kind != "hash"  # the hash stage is long and needs no warm-up
                    t0 = time.perf_counter()
                    quiet = timed(fn, repeats, warm)
                    # a busy process must outlive the (slowed) timed calls but never this script by much
                    with busy(args.busy, limit_s=60 + 10 * (time.perf_counter() - t0)):
                        loaded = timed(fn, repeats, warm)
            finally:
                threads.set_override(None)
            res[vname] = {"quiet": quiet, "busy": loaded}
            rows.append({"stage": name, "kind": kind, "variant": vname, "torch_threads": n_torch,
                         "kernel_threads": n_core, "quiet_s": quiet, "busy_s": loaded,
                         "busy_over_quiet": loaded / quiet})
            print(f"{name:45s} {vname:32s} torch={n_torch} kernels={n_core} quiet {quiet:.3f}s "
                  f"busy {loaded:.3f}s x{loaded / quiet:.2f}", flush=True)
        b, a = res["before (torch default threads)"], res["after (binllm.threads policy)"]
        rows[-1]["after_quiet_over_before"] = a["quiet"] / b["quiet"]
        rows[-1]["after_busy_over_before"] = a["busy"] / b["busy"]
        rows[-1]["target_met"] = "yes" if a["busy"] <= 2 * a["quiet"] and a["quiet"] <= 1.1 * b["quiet"] else "no"
    name = "contention_quick" if args.quick else "contention"
    env = environment()
    env["policy"] = threads.describe()
    env["busy_processes"] = args.busy
    write_table(name, rows, ["stage", "kind", "variant", "torch_threads", "kernel_threads", "quiet_s", "busy_s",
                             "busy_over_quiet", "after_quiet_over_before", "after_busy_over_before", "target_met"],
                env,
                f"CPU: {env['cpu']} ({env['cores']} cores). Seconds (hash model: per epoch, within a wall budget), "
                f"median of {repeats} timed call(s) per cell after one warm-up (none for the hash model); "
                f"`busy` = next to {args.busy} processes spinning in Python loops. `before` runs every "
                "stage with torch's default thread count; `after` with binllm.threads' per-stage plan. Target: "
                "after busy <= 2x after quiet, and after quiet <= 1.1x before quiet.")
    print(open(os.path.join(os.path.dirname(__file__), "results", name + ".md")).read().split("Machine facts")[0])


if __name__ == "__main__":
    main()
