"""Stage speed when the CPU is shared: each pipeline stage timed quiet and next to
two busy processes, "before" (torch's default threads and OpenMP's default
spin-then-sleep waiting, as version 0.1 ran) and "after" (binllm.threads: the
per-stage thread plan and the PASSIVE OpenMP wait policy the command line
sets), side by side in one run. OpenMP reads its policy once, when torch
loads, so each variant runs in its own child process of this script.

Stages: the hash model (a few epochs on the embedded ML-100K), a data-prepare
pass (ML-100K protocol), Yes/No scoring of prompts with the embedded SmolLM2,
LoRA tuning steps on it (batch 8), and a binllm top-k call; then reference work (independent matmul pieces
on 1 and on every core's worker threads) that gives the machine's floor: the slow-down no stage on as many
threads can beat next to the busy processes. The busy processes are spawned and killed by this
script; each also exits on its own after a deadline, so none outlives it.
Targets: busy <= 2x quiet for every stage under the policy; the policy's quiet
time no worse than before by more than 10%.

Writes bench/results/contention.md/.csv (contention_quick with --quick).

    python bench/bench_contention.py [--quick] [--repeats N]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import binllm  # noqa: E402
from binllm import threads  # noqa: E402  (torch is imported later: the child decides OpenMP's policy first)

from common import environment, write_table  # noqa: E402

BUSY_SRC = ("import os, time\n"
            "parent, end = os.getppid(), time.monotonic() + {limit}\n"
            "while time.monotonic() < end and os.getppid() == parent:  # never outlives this script\n"
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


def make_stages(quick: bool, variant: str) -> dict[str, tuple[str, Callable[[], float]]]:
    """name -> (thread-stage kind, callable returning its work units). The hash stage reports
    seconds per epoch and stops at a wall budget: with torch's default threads on a shared CPU
    one epoch can take tens of seconds. The LLM stages run as version 0.1 did for `variant`
    "before" (one batch at a time, every matmul on torch's OpenMP threads) and as binllm runs them
    now for "after" (batches, and shards of a training batch, side by side on threads.map_parallel
    workers)."""
    import torch

    from binllm import data
    from binllm.cf import hashing
    from binllm.llm import scoring, tuning
    from binllm.llm.prompts import PromptBuilder, PromptConfig

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

    # scored through a LoRA adapter (peft, unmerged) in the loaded dtype, as `binllm score --adapter` runs
    from peft import get_peft_model

    lora = tuning.lora_config(tuning.TuneConfig())  # the run's LoRA shape: r 8, alpha 16, q and v
    lm, tok = scoring.load_llm(progress=False)
    lm = get_peft_model(lm, lora)
    # binllm score's default batch
    scorer = scoring.Scorer(lm, tok, batch_size=16, workers=1 if variant == "before" else None)
    rows = np.flatnonzero(prep.mask("test"))[: 8 if quick else 32]
    prompts, _ = PromptBuilder(PromptConfig(kind="text"), prep.titles).for_rows(prep, rows)

    def llm_stage() -> float:
        scorer.score(prompts)
        return 1

    # LoRA tuning steps the way stages.tune runs them on a CPU: float32 weights, eager attention, bf16
    # autocast where the CPU has AMX; one unit = one optimizer step on a batch of 8 prompts.
    base, _ = scoring.load_llm(dtype="float32", progress=False, attn_implementation=scoring.training_attention("cpu"))
    peft_model = get_peft_model(base, lora)
    tuning.use_shard_dropout(peft_model)  # as tuning.tune does
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    ids, mask, pos = scoring.collate_left(scoring.tokenize(tok, prompts[:8]), tok.pad_token_id)
    batch = {"input_ids": ids, "attention_mask": mask, "position_ids": pos}
    yes_id, _ = scoring.answer_token_ids(tok)
    bf16 = scoring.cpu_has_fast_bf16()

    def loss_of(b: dict) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            yes = scoring.last_logits(peft_model, b["input_ids"], b["attention_mask"], b["position_ids"])
        yes = yes[:, yes_id].float()
        return torch.nn.functional.binary_cross_entropy_with_logits(yes, torch.ones_like(yes))

    def tune_stage() -> float:
        steps = 1 if quick else 2
        peft_model.train()
        for _ in range(steps):
            if variant == "before":
                loss_of(batch).backward()
            else:
                tuning.backward_in_shards(loss_of, batch, params)  # YesNoTrainer's CPU step
            opt.step()
            opt.zero_grad()
        return steps

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
            "LLM LoRA tuning (SmolLM2, batch 8, s/step)": ("llm", tune_stage),
            f"binllm topk ({n_q}x{n_i:,}, d=32, k=10)": ("kernels", kernels_stage)}


def reference_work(workers: int, quick: bool) -> Callable[[], float]:
    """The machine's floor for a stage that keeps `workers` threads busy: `workers` threads doing
    equal, independent float32 matmul pieces (one torch thread each, threads.map_parallel, no
    synchronisation until the end of a call). Its busy/quiet ratio is what the scheduler and the
    hardware give that many threads next to the busy processes; no stage on as many threads can beat it."""
    import torch

    a = torch.randn(384, 384)
    pieces = list(range(4 * workers))  # several pieces per worker: the call ends when the slowest worker does

    def piece(_: int) -> float:
        x = a
        for _ in range(8 if quick else 96):  # about 0.25 s a call on one thread of the Xeon quiet
            x = torch.tanh(x @ a)
        return float(x[0, 0])

    def run() -> float:
        threads.map_parallel(piece, pieces, total=workers)
        return 1

    return run


def reference_counts() -> list[int]:
    """Thread counts the floor is measured for: 1, every usable core, and each count of the stage plan
    (capped at the cores: an OMP_NUM_THREADS, BINLLM_NUM_THREADS or BINLLM_STAGE_THREADS the user set).
    The plan's other counts (hash: 1 or every core, depending on the load) are among the first two, so
    every child process measures the same counts."""
    cores = threads.available_cores()
    return sorted({1, cores} | {min(n, cores) for n in threads.plan().values()})


def stage_threads(kind: str, torch_threads: int, kernel_threads: int) -> int:
    """Threads a stage keeps busy, capped at the cores: the data protocol runs single-threaded
    (pandas/numpy), the C++ kernels on their own std::threads, the rest on torch's count."""
    n = {"data": 1, "kernels": kernel_threads}.get(kind, torch_threads)
    return max(1, min(n, threads.available_cores()))


KINDS = threads.KINDS  # the thread-stage kinds, in the table's order
VARIANTS = {"before": "before (torch default threads, OpenMP default wait)",
            "after": "after (binllm.threads: policy decided at start)"}


def child(variant: str, quick: bool, repeats: int, kinds: list[str]) -> list[dict]:
    """Times every stage in this process, started quiet or next to busy processes by the parent.
    "after" decides like the command line does (binllm.threads.configure_openmp, before torch loads)."""
    if variant == "after":
        threads.configure_openmp()
    import torch

    stages = make_stages(quick, variant)
    # "before": every stage kind at torch's default count (all cores), as version 0.1 ran
    threads.set_override(str(threads.available_cores()) if variant == "before" else None)
    rows = []
    for name, (kind, fn) in stages.items():
        if kind not in kinds:
            continue
        with threads.stage(kind):
            n_torch, n_core = torch.get_num_threads(), binllm.num_threads()
            secs = timed(fn, repeats, warmup=kind != "hash")  # the hash stage is long and needs no warm-up
        rows.append({"stage": name, "kind": kind, "variant": VARIANTS[variant], "torch_threads": n_torch,
                     "kernel_threads": n_core, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
                     "seconds": secs, "policy": threads.describe()})
        print(f"{name:45s} {variant:6s} torch={n_torch} kernels={n_core} {secs:.3f}s", file=sys.stderr, flush=True)
    threads.set_override(None)
    for n in reference_counts():
        secs = timed(reference_work(n, quick), repeats, warmup=True)
        rows.append({"stage": f"reference: {n} independent thread(s)", "kind": "reference", "workers": n,
                     "seconds": secs})
        print(f"reference {n} thread(s) {variant:6s} {secs:.3f}s", file=sys.stderr, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller stages, 1 repeat: checks the script works")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per cell (default 3, quick 1)")
    ap.add_argument("--busy", type=int, default=2, help="busy processes next to the stage (default 2)")
    ap.add_argument("--kinds", default=",".join(KINDS),
                    help=f"comma-separated stage kinds to time (default all: {','.join(KINDS)}); a subset writes "
                         "contention_<kinds>.md")
    ap.add_argument("--child", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    kinds = [k for k in args.kinds.split(",") if k]
    if not kinds or any(k not in KINDS for k in kinds):
        ap.error(f"--kinds: expected a comma-separated subset of {','.join(KINDS)}; got {args.kinds!r}")
    if args.child:
        print(json.dumps(child(args.child, args.quick, repeats, kinds)))
        return
    # Each variant x condition in its own process: OpenMP reads its policy once, when torch loads, and binllm
    # decides it from the load it sees at start, so the busy processes start before the process does.
    res: dict[tuple[str, str], list[dict]] = {}
    env = {k: v for k, v in os.environ.items() if k not in threads.OPENMP_ENV}
    for variant in VARIANTS:
        for cond, n_busy in (("quiet", 0), ("busy", args.busy)):
            cmd = [sys.executable, __file__, "--child", variant, "--repeats", str(repeats), "--kinds", ",".join(kinds)]
            with busy(n_busy, limit_s=4 * 3600):
                out = subprocess.run(cmd + (["--quick"] if args.quick else []), env=env, check=True,
                                     stdout=subprocess.PIPE, text=True).stdout
            res[variant, cond] = json.loads(out.strip().splitlines()[-1])
    # The floor per thread count, from the "after" processes (the reference work is the same in both variants;
    # the "before" children measure it too, and their figures are in the CSV's reference rows).
    ref_busy = {r["workers"]: r["seconds"] for r in res["after", "busy"] if r["kind"] == "reference"}
    floor = {r["workers"]: ref_busy[r["workers"]] / r["seconds"]
             for r in res["after", "quiet"] if r["kind"] == "reference" and r["workers"] in ref_busy}
    rows = []
    for i in range(len(res["before", "quiet"])):
        b_q, b_b = res["before", "quiet"][i], res["before", "busy"][i]
        a_q, a_b = res["after", "quiet"][i], res["after", "busy"][i]
        if b_q["kind"] == "reference":
            for variant, q, bz in (("before", b_q, b_b), ("after", a_q, a_b)):
                rows.append({"stage": q["stage"], "kind": "reference",
                             "variant": f"measured in the {variant} processes",
                             "quiet: torch threads / wait": f"{q['workers']} workers x 1",
                             "busy: torch threads / wait": f"{bz['workers']} workers x 1",
                             "quiet_s": q["seconds"], "busy_s": bz["seconds"],
                             "busy_over_quiet": bz["seconds"] / q["seconds"]})
            continue
        for q, bz in ((b_q, b_b), (a_q, a_b)):
            k = stage_threads(q["kind"], bz["torch_threads"], bz["kernel_threads"])
            ratio = bz["seconds"] / q["seconds"]
            rows.append({**{k_: q[k_] for k_ in ("stage", "kind", "variant")},
                         "quiet: torch threads / wait": f"{q['torch_threads']} / {q['omp_wait_policy']}",
                         "busy: torch threads / wait": f"{bz['torch_threads']} / {bz['omp_wait_policy']}",
                         "kernel_threads": q["kernel_threads"], "quiet_s": q["seconds"], "busy_s": bz["seconds"],
                         "busy_over_quiet": ratio, "busy_threads": k,
                         # blank where no reference ran on k threads (not expected: see reference_counts)
                         "floor": floor.get(k, ""), "busy_over_floor": ratio / floor[k] if k in floor else ""})
        rows[-1].update(after_quiet_over_before=a_q["seconds"] / b_q["seconds"],
                        after_busy_over_before=a_b["seconds"] / b_b["seconds"],
                        target_met="yes" if a_b["seconds"] <= 2 * a_q["seconds"]
                        and a_q["seconds"] <= 1.1 * b_q["seconds"] else "no")
    name = "contention" + ("" if kinds == list(KINDS) else "_" + "_".join(kinds)) + ("_quick" if args.quick else "")
    env_info = environment()
    env_info["policy"] = {f"{v} / {c}": rows_[0]["policy"] for (v, c), rows_ in res.items()}
    env_info["busy_processes"] = args.busy
    write_table(name, rows, ["stage", "kind", "variant", "quiet: torch threads / wait", "busy: torch threads / wait",
                             "kernel_threads", "quiet_s", "busy_s", "busy_over_quiet", "busy_threads", "floor",
                             "busy_over_floor", "after_quiet_over_before", "after_busy_over_before", "target_met"],
                env_info,
                f"CPU: {env_info['cpu']} ({threads.available_cores()} cores). Seconds (hash model: per epoch, "
                f"within a wall budget; tuning: per step), median of {repeats} timed call(s) per cell after one "
                f"warm-up (none for the hash model); `busy` = next to {args.busy} processes spinning in Python "
                "loops. `before` runs "
                "every stage with torch's default thread count and OpenMP's default wait policy; `after` as the "
                "command line runs it: binllm.threads decides the wait policy and the hash stage's threads from "
                "the load it sees at start, and the LLM stages run batches (scoring) and batch shards (tuning) on "
                "worker threads of one torch thread each (each variant and condition in its own process, the "
                "busy processes started first). "
                "`floor` = busy/quiet of the reference work on `busy_threads` threads (the threads the stage keeps "
                "busy next to the busy processes), as measured in the `after` processes and used for both variants' "
                "rows (the `before` processes' own figures are the reference rows marked so): equal, independent "
                "matmul pieces on that many worker threads, "
                "with nothing to wait for; under fair time-sharing of the cores it is (threads + busy processes) / "
                "cores for one thread per core, and anything the hardware loses to the neighbours (shared caches, "
                "a host's SMT sibling) comes on top. `busy_over_floor` = busy_over_quiet / floor: how much the "
                "stage loses beyond what the machine gives any work on as many threads (for the hash stage, "
                "on every core quiet and one thread busy, that includes the second core it gives up). "
                "Target: after busy <= 2x after quiet, and after quiet <= 1.1x before quiet.")
    print(open(os.path.join(os.path.dirname(__file__), "results", name + ".md")).read().split("Machine facts")[0])


if __name__ == "__main__":
    main()
