"""Recipe search for the embedded default run (issue: let the collaborative codes matter).

Each config is one ``stages.tune`` call of BinLLM's code step (text + codes
prompts) on the run folder's prepared data and code book, started from the
run's text-only adapter (two-step tuning) or from scratch (one-step,
"intuitive"); model selection on the same valid_small rows as the run. The
table gives each config's valid AUC at every evaluation round, its best, and
the wall time of the call (model load and evaluation rounds included), next
to BinMF and item popularity on the same valid rows. The 1-minute load
average before and after each call is recorded, so a timing taken on a shared
machine says so.

    python tools/recipe_search.py --run runs/ml100k [--only A,B] [--seeds 0,1] [--out results/recipe_search]

Adapters go to RUN/search/<name> (seed 0) and RUN/search/<name>_s<seed>; a
finished config is read back, not re-run, so an interrupted search resumes
where it stopped. Config A at seed 0 is the run's own step 2 (llm/binllm_dotted),
read from the run folder when it is finished.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from binllm import data, metrics
from binllm._io import atomic_write_json, atomic_write_text
from binllm.llm.prompts import PromptConfig
from binllm.llm.tuning import TuneConfig
from binllm.run import stages
from binllm.run.pipeline import RunConfig, llm_stages, tune_config


@dataclass(frozen=True)
class Config:
    name: str
    note: str
    tune: dict = field(default_factory=dict)  # TuneConfig overrides of the run's step-2 settings
    max_titles: int = 5
    from_text: bool = True  # two-step (from the text-only adapter) or one-step


# The run's step-2 settings, as pipeline.run builds them (pipeline.tune_config); LoRA dropout and the rest
# keep TuneConfig's defaults.
_RUN = RunConfig()
_STEP1 = tune_config(_RUN, llm_stages(_RUN)[0])
_STEP2 = tune_config(_RUN, llm_stages(_RUN)[1])
_SHAPE = ("lora_r", "lora_alpha", "target_modules")  # what a continued adapter keeps from its text step
BASE = {k: getattr(_STEP2, k) for k in ("lr", "max_steps", "batch_size", "eval_steps", "patience", "warmup_steps",
                                         "lora_r", "lora_alpha", "seed")}

CONFIGS = [
    Config("A", "today's recipe (lr 1e-3, r 8 q,v, dropout 0.05)"),
    Config("B", "lr 3e-3, dropout 0", {"lr": 3e-3, "lora_dropout": 0.0}),
    Config("C", "lr 3e-3, dropout 0, r 16 on q,k,v,o", {"lr": 3e-3, "lora_dropout": 0.0, "lora_r": 16,
                                                        "lora_alpha": 32,
                                                        "target_modules": ("q_proj", "k_proj", "v_proj", "o_proj")}),
    Config("D", "lr 3e-3, dropout 0, 3 history titles", {"lr": 3e-3, "lora_dropout": 0.0}, max_titles=3),
    Config("E", "one step (no text step), 400 steps, lr 3e-3, dropout 0",
           {"lr": 3e-3, "lora_dropout": 0.0, "max_steps": 400}, from_text=False),
    Config("F", "lr 1e-3, dropout 0", {"lora_dropout": 0.0}),
    Config("G", "lr 5e-3, dropout 0", {"lr": 5e-3, "lora_dropout": 0.0}),
]


def run_config(run: Path, c: Config, valid_rows: int, train_rows: int, seed: int = 0) -> dict:
    out = run / "search" / (c.name if seed == 0 else f"{c.name}_s{seed}")
    info = out / "adapter" / "binllm.json"
    record = out / "search.json"
    if record.is_file() and info.is_file():
        return json.loads(record.read_text())
    tc = TuneConfig(**{**BASE, **c.tune, "seed": seed})
    own = run / "llm" / "binllm_dotted" / "adapter" / "binllm.json"
    same = own.is_file() and json.loads(own.read_text())["tune_config"] == json.loads(json.dumps(asdict(tc)))
    if c.name == "A" and seed == 0 and same:  # (compared as JSON: tuples are lists there)
        # the run's own step 2 is config A at seed 0: read it rather than train it again
        hist = json.loads(own.read_text())["history"]
        rec = {"name": c.name, "seed": seed, "note": c.note + " (the run's own step 2)", "tune": asdict(tc),
               "max_titles": c.max_titles, "from_text": c.from_text, "wall_s": None, "load_before": None,
               "load_after": None, "rounds": {int(h["step"]): float(h["eval_auc"]) for h in hist},
               "best_auc": max(float(h["eval_auc"]) for h in hist)}
        atomic_write_json(record, rec)
        return rec
    pc = PromptConfig(kind="text_codes", domain="movie", code_style="dotted", max_titles=c.max_titles)
    # a final adapter without a record, or a resumed checkpoint, would time only part of the work
    partial = info.is_file() or (out / "checkpoints").is_dir()
    load0 = os.getloadavg()[0]
    t = time.perf_counter()
    init = text_step(run, c, valid_rows, train_rows) if c.from_text else None
    stages.tune(run / "data", out, pc, tc, codebook=run / "hash" / "codebook.safetensors",
                init_adapter=init,
                train_rows=train_rows, valid_rows=valid_rows, seed=0)  # seed 0: the run's row samples
    wall: float | None = None if partial else time.perf_counter() - t
    hist = json.loads(info.read_text())["history"]
    rec = {"name": c.name, "seed": seed, "note": c.note, "tune": asdict(tc), "max_titles": c.max_titles,
           "from_text": c.from_text,
           "wall_s": wall, "load_before": load0, "load_after": os.getloadavg()[0],
           "rounds": {int(h["step"]): float(h["eval_auc"]) for h in hist},
           "best_auc": max(float(h["eval_auc"]) for h in hist)}
    atomic_write_json(record, rec)
    return rec


def text_step(run: Path, c: Config, valid_rows: int, train_rows: int) -> Path:
    """The text-only adapter a two-step config continues: the run's own when the config keeps its LoRA
    shape, else one tuned here with the run's step-1 settings and the config's shape (a continued
    adapter keeps its rank and targets: tuning.check_init_adapter), shared by the config's seeds."""
    shape = {k: c.tune[k] for k in _SHAPE if k in c.tune and c.tune[k] != getattr(_STEP1, k)}
    if not shape:
        return run / "llm" / "text" / "adapter"
    out = run / "search" / f"text_{c.name}"
    tc = TuneConfig(**{**{k: getattr(_STEP1, k) for k in BASE}, **shape})
    pc = PromptConfig(kind="text", domain="movie", code_style="dotted", max_titles=c.max_titles)
    stages.tune(run / "data", out, pc, tc, codebook=None, train_rows=train_rows, valid_rows=valid_rows, seed=0)
    return out / "adapter"


def reference_rows(run: Path, valid_rows: int) -> dict[str, float]:
    """BinMF and item popularity AUC on the valid rows the tuning evaluates on."""
    prep = data.load_prepared(run / "data")
    rows = stages.sample_rows(prep, "valid_small", valid_rows, 0)
    y = prep.rows.iloc[rows]["label"].to_numpy()
    out = {}
    for name, method in (("BinMF (hash model, 32 bits)", "binmf"), ("item popularity", "popularity"),
                         ("MF (256-d)", "mf")):
        s = stages.baseline_scores(prep, method, rows, codebook=run / "hash" / "codebook.safetensors",
                                   hash_dir=run / "hash")
        out[name] = float(metrics.auc(y, s))
    return out


def table(recs: list[dict], refs: dict[str, float], valid_rows: int, machine: str) -> str:
    steps = sorted({s for r in recs for s in r["rounds"]})
    head = ["config", "seed", "settings", "text step first", *[f"AUC@{s}" for s in steps], "best valid AUC",
            "wall min", "load avg before/after"]
    lines = ["# Recipe search: BinLLM code step on the embedded ML-100K", "",
             f"Valid AUC on the run's {valid_rows} valid_small rows (per-user split); every config tunes the text + "
             f"codes prompt (dotted 32-bit codes) with batch {BASE['batch_size']} and evaluates every "
             f"{BASE['eval_steps']} steps; the seed sets the dropout masks and batch order, and the LoRA init of "
             "one-step configs (the row samples stay the run's). Two-step configs start from the run's text-only "
             "adapter (100 steps), or from a text step of their own LoRA shape tuned with the run's "
             "step-1 settings (its time is in the wall time of the config's first seed). Wall "
             f"time: the whole tune call (model load and evaluation rounds of {valid_rows} prompts). Machine: "
             f"{machine}. A load average well above 2 means the machine was shared and the wall time is inflated.",
             "", "Reference on the same rows: " + ", ".join(f"{k} {v:.4f}" for k, v in refs.items()) + ".", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in recs:
        cells = [r["name"], str(r.get("seed", 0)), r["note"], "yes" if r["from_text"] else "no",
                 *[f"{r['rounds'][s]:.4f}" if s in r["rounds"] else "" for s in steps],
                 f"{r['best_auc']:.4f}", "?" if r["wall_s"] is None else f"{r['wall_s'] / 60:.1f}",
                 "/".join("?" if r[k] is None else f"{r[k]:.1f}" for k in ("load_before", "load_after"))]
        lines.append("| " + " | ".join(cells) + " |")
    by: dict[str, list[float]] = {}
    for r in recs:
        by.setdefault(r["name"], []).append(r["best_auc"])
    lines += ["", "Best valid AUC over seeds (mean, min-max):", "", "| config | seeds | mean | min | max |",
              "|---|---|---|---|---|"]
    lines += [f"| {k} | {len(v)} | {sum(v) / len(v):.4f} | {min(v):.4f} | {max(v):.4f} |" for k, v in by.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/ml100k", help="a finished `binllm run` folder (data, hash, llm/text)")
    ap.add_argument("--only", default=None, help="comma-separated config names (default: all)")
    ap.add_argument("--out", default="results/recipe_search", help="table path without suffix")
    ap.add_argument("--valid-rows", type=int, default=300)
    ap.add_argument("--train-rows", type=int, default=4000)
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds of each config")
    args = ap.parse_args()
    from binllm import threads

    threads.configure_openmp()  # as the command line does, before stages.tune loads torch
    run = Path(args.run)
    if not (run / "llm" / "text" / "adapter" / "binllm.json").is_file():
        sys.exit(f"recipe_search: error: {run} has no finished text-only adapter (run `binllm run` first)")
    names = set(args.only.split(",")) if args.only else None
    todo = [c for c in CONFIGS if names is None or c.name in names]
    refs = reference_rows(run, args.valid_rows)
    from binllm.bench import machine as _machine

    where = f"{_machine.cpu_model() or 'unknown CPU'}, {os.cpu_count()} cores"
    seeds = [int(x) for x in args.seeds.split(",")]
    recs = []
    for c in CONFIGS:
        for seed in sorted(set(seeds) | {0}):
            rec_file = run / "search" / (c.name if seed == 0 else f"{c.name}_s{seed}") / "search.json"
            if c in todo and seed in seeds:
                print(f"recipe_search: config {c.name}, seed {seed}: {c.note}", file=sys.stderr, flush=True)
                rec = run_config(run, c, args.valid_rows, args.train_rows, seed)
            elif rec_file.is_file():
                rec = json.loads(rec_file.read_text())
            else:
                continue
            rec["rounds"] = {int(s): v for s, v in rec["rounds"].items()}  # JSON keys come back as strings
            recs.append(rec)
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out.with_suffix(".md"), table(recs, refs, args.valid_rows, where))
            atomic_write_json(out.with_suffix(".json"), {"references": refs, "configs": recs, "base": BASE})

if __name__ == "__main__":
    main()
