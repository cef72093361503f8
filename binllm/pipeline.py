"""The main job, ``binllm run``: prepare -> hash model and MF -> prompts ->
two-step LoRA tuning -> evaluation, under one output folder.

Each stage writes its outputs atomically and is skipped when they exist, so
re-running the same command resumes (tuning also resumes inside a stage from
its last Trainer checkpoint). The results table has rows MF, BinMF (the hash
model alone), text-only (step 1) and BinLLM (step 2, dotted codes); with
ablations also codes-only, intuitive (one-step) tuning and bit-string codes.
All rows are evaluated on the same test rows.

CPU defaults are sized for a 2-core machine (about half an hour): LLM tuning
on a sample of train rows, evaluation rounds on a sample of ``valid_small``,
and a sample of test rows. ``full=True`` (``--full``) uses every row and the
paper's step sizes, for a GPU.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics


@dataclass
class RunConfig:
    """Settings of ``binllm run``.

    Args:
        out: output folder.
        model: 'smollm2' (embedded default) or a local Hugging Face causal-LM folder.
        device, dtype: 'auto' picks CUDA + bf16 when there is a GPU, else CPU + float32.
        train_rows, valid_rows, test_rows: sizes of the row samples (None: all rows).
        step1_steps, step2_steps: LoRA updates of the text-only and the code step.
        step1_lr, step2_lr: their learning rates (reference 1e-3 / 1e-4; at a small
            budget step 2 learns faster with 1e-3, see shared/NOTES-ml100k.md).
        batch_size, eval_steps, patience: Trainer settings of both steps.
        max_titles: history titles per prompt (the protocol allows 10).
        code_style: 'dotted' or 'bits' for BinLLM.
        ablations: also codes-only, intuitive tuning and bit-string codes.
        hash_epochs: epoch cap of the hash model and MF.
        seed: samples, models and data order.
    """

    out: str = "runs/ml100k"
    model: str = "smollm2"
    device: str = "auto"
    dtype: str = "auto"
    train_rows: int | None = 2000
    valid_rows: int | None = 100
    test_rows: int | None = 300
    step1_steps: int = 60
    step2_steps: int = 120
    step1_lr: float = 1e-3
    step2_lr: float = 1e-3
    batch_size: int = 8
    eval_steps: int = 30
    patience: int = 20
    max_titles: int = 5
    code_style: str = "dotted"
    ablations: bool = False
    hash_epochs: int = 400
    seed: int = 0

    @classmethod
    def full(cls, **kw: Any) -> "RunConfig":
        """Every row and the reference step settings (for a GPU)."""
        base = dict(train_rows=None, valid_rows=None, test_rows=None, step1_steps=2000, step2_steps=2000,
                    step1_lr=1e-3, step2_lr=1e-4, batch_size=16, eval_steps=50, max_titles=10)
        base.update(kw)
        return cls(**base)


def _sample(rows: np.ndarray, n: int | None, rng: np.random.Generator) -> np.ndarray:
    if n is None or n >= len(rows):
        return rows
    return np.sort(rng.choice(rows, size=n, replace=False))


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=float))
    os.replace(tmp, path)


def _log(msg: str) -> None:
    print(f"[binllm run {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(cfg: RunConfig, progress: bool = True) -> dict:
    """Runs (or resumes) the whole pipeline; returns the results dict."""
    import torch

    from . import data, hashing, scoring, tuning
    from .cli import pretrain
    from .codebook import CodeBook
    from .prompts import PromptBuilder, PromptConfig

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "run_config.json", dataclasses.asdict(cfg))
    t_start = time.perf_counter()

    # 1. data
    if not (out / "data" / "meta.json").is_file():
        _log("prepare ML-100K (embedded default)")
        data.prepare(data.read_ml100k(), "ml-100k").save(out / "data")
    prep = data.load_prepared(out / "data")
    _log("data:\n" + prep.summary())

    # 2. hash model and MF
    if not (out / "hash" / "metrics.json").is_file():
        _log("train the hash model (32-bit codes) and the 256-d MF baseline")
        hc = hashing.HashConfig(max_epochs=cfg.hash_epochs, seed=cfg.seed)
        mc = hashing.HashConfig(model="mf", d=256, lr=1e-3, weight_decay=1e-4, max_epochs=cfg.hash_epochs,
                                patience=10, seed=cfg.seed)
        pretrain(str(out / "data"), str(out / "hash"), hc, mc, resume=True, progress=progress)
    cb = CodeBook.load(out / "hash" / "codebook.safetensors")
    cb.check_dataset(prep)
    hash_metrics = json.loads((out / "hash" / "metrics.json").read_text())

    # 3. row samples
    rng = np.random.default_rng(cfg.seed)
    samples = {
        "train": _sample(np.flatnonzero(prep.mask("train")), cfg.train_rows, rng),
        "valid": _sample(np.flatnonzero(prep.mask("valid_small")), cfg.valid_rows, rng),
        "test": _sample(np.flatnonzero(prep.mask("test")), cfg.test_rows, rng),
    }
    _write_json(out / "samples.json", {k: v.tolist() for k, v in samples.items()})
    rows = prep.rows
    test = rows.iloc[samples["test"]]
    tu, ty, tw = test["uid"].to_numpy(), test["label"].to_numpy(), test["not_cold"].to_numpy()

    # 4. MF and BinMF scores on the same test rows
    results: dict[str, dict] = {}
    device = scoring.resolve_device(cfg.device)
    mf_scores = _baseline_scores(out, prep, samples["test"])
    results["MF"] = metrics.evaluate(tu, ty, mf_scores, tw)
    results["BinMF (hash model)"] = metrics.evaluate(tu, ty, cb.scores(tu, test["iid"].to_numpy()), tw)

    # 5. LLM stages
    model_dir = str(scoring.default_model_dir(progress)) if cfg.model == scoring.DEFAULT_MODEL else cfg.model
    use_cuda = device.startswith("cuda")
    bf16 = use_cuda and scoring.resolve_dtype(cfg.dtype, device) == torch.bfloat16

    def tokenized(pc: PromptConfig, tok: Any) -> dict:
        builder = PromptBuilder(pc, prep.titles, cb if pc.uses_codes else None)
        res = {}
        for split, r in samples.items():
            sub = rows.iloc[r]
            hist = prep.history(r, pc.max_titles)
            u, i = sub["uid"].to_numpy(), sub["iid"].to_numpy()

            def build(pos, caps, u=u, i=i, hist=hist):
                return builder.build(u[pos], i[pos], [hist[p] for p in pos], caps)

            ids, _ = scoring.fit_prompts(tok, build, len(r), pc.max_titles, 1024)
            res[split] = tuning.PromptSet(ids, sub["label"].to_numpy(), u)
        return res

    stages = [("text-only (step 1)", "text", "dotted", None, cfg.step1_steps, cfg.step1_lr, "text")]
    stages.append((f"BinLLM ({cfg.code_style})", "text_codes", cfg.code_style, "text", cfg.step2_steps,
                   cfg.step2_lr, f"binllm_{cfg.code_style}"))
    if cfg.ablations:
        stages += [("codes only (two-step)", "codes", "dotted", "text", cfg.step2_steps, cfg.step2_lr, "codes_only"),
                   ("intuitive (one-step, dotted)", "text_codes", "dotted", None, cfg.step1_steps + cfg.step2_steps,
                    cfg.step1_lr, "intuitive"),
                   ("BinLLM (bits)" if cfg.code_style != "bits" else "BinLLM (dotted)", "text_codes",
                    "bits" if cfg.code_style != "bits" else "dotted", "text", cfg.step2_steps, cfg.step2_lr,
                    "binllm_bits" if cfg.code_style != "bits" else "binllm_dotted")]
    curves: dict[str, list] = {}
    token_counts: dict[str, float] = {}
    for label, kind, style, init, steps, lr, key in stages:
        stage_dir = out / "llm" / key
        score_file = stage_dir / "test_scores.npy"
        pc = PromptConfig(kind=kind, code_style=style, max_titles=cfg.max_titles)
        if not score_file.is_file():
            _log(f"tune {label}: {steps} steps at lr {lr}" + (f", continuing the {init} adapter" if init else ""))
            base, tok = scoring.load_llm(model_dir, dtype=cfg.dtype, device=device, progress=progress)
            sets = tokenized(pc, tok)
            tc = tuning.TuneConfig(lr=lr, batch_size=cfg.batch_size, max_steps=steps, eval_steps=cfg.eval_steps,
                                   patience=cfg.patience, warmup_steps=min(20, steps // 10), seed=cfg.seed)
            init_dir = out / "llm" / init / "adapter" if init else None
            meta = {"prompt": dataclasses.asdict(pc), "codebook_fingerprint": cb.fingerprint if pc.uses_codes else None,
                    "model": model_dir}
            res = tuning.tune(base, tok, sets["train"], sets["valid"], tc, stage_dir, init_adapter=init_dir,
                              meta=meta, progress=progress, use_cpu=not use_cuda, bf16=bf16)
            _log(f"score {len(samples['test'])} test prompts with the best {label} adapter")
            scorer = scoring.Scorer(res.model, tok, batch_size=16)
            s = scorer.score_ids(sets["test"].ids, progress=progress, desc=f"score {key}")
            stage_dir.mkdir(parents=True, exist_ok=True)
            np.save(stage_dir / "test_scores.tmp.npy", s)
            os.replace(stage_dir / "test_scores.tmp.npy", score_file)
            _write_json(stage_dir / "tokens.json", {"mean_prompt_tokens": float(np.mean([len(x) for x in sets["test"].ids]))})
            del res, base
        s = np.load(score_file)
        results[label] = metrics.evaluate(tu, ty, s, tw)
        info = json.loads((stage_dir / "adapter" / "binllm.json").read_text())
        curves[label] = [(h["step"], h["eval_auc"]) for h in info["history"]]
        token_counts[label] = json.loads((stage_dir / "tokens.json").read_text())["mean_prompt_tokens"]

    # 6. results
    full_test = {"MF": hash_metrics["mf"], "BinMF (hash model)": hash_metrics["hash"]}
    summary = {
        "config": dataclasses.asdict(cfg),
        "test_rows": int(len(samples["test"])),
        "test_rows_warm": int(tw.sum()),
        "results": results,
        "hash_models_on_full_test": full_test,
        "item_positive_rate_auc": _item_rate_auc(prep, test),
        "known_user_rows": int(tw.sum()),
        "mean_prompt_tokens": token_counts,
        "valid_auc_curves": curves,
        "seconds": time.perf_counter() - t_start,
    }
    _write_json(out / "results.json", summary)
    table = _results_markdown(summary)
    tmp = out / "results.md.tmp"
    tmp.write_text(table)
    os.replace(tmp, out / "results.md")
    _plot(curves, out / "valid_auc.png")
    _log("results:\n" + table)
    return summary


def _baseline_scores(out: Path, prep: Any, test_rows: np.ndarray) -> np.ndarray:
    """MF scores of the test sample from the MF checkpoint's best state."""
    import torch

    from . import hashing

    ck = torch.load(out / "hash" / "mf" / "checkpoint.pt", weights_only=False)
    cfg = hashing.HashConfig(**ck["config"])
    model = hashing.build_model(cfg, prep.n_user_slots, prep.n_item_slots)
    model.load_state_dict(ck["state"]["best_state"] or ck["model"])
    r = prep.rows.iloc[test_rows]
    u = torch.from_numpy(r["uid"].to_numpy().astype(np.int64))
    i = torch.from_numpy(r["iid"].to_numpy().astype(np.int64))
    return model.binary_scores(u, i).numpy()


def _item_rate_auc(prep: Any, test: Any) -> float:
    """AUC of a popularity-style baseline: each item's positive rate in train."""
    tr = prep.split("train")
    rate = np.full(prep.n_item_slots, tr["label"].mean())
    g = tr.groupby("iid")["label"].mean()
    rate[g.index.to_numpy()] = g.to_numpy()
    return metrics.auc(test["label"].to_numpy(), rate[test["iid"].to_numpy()])


def _results_markdown(s: dict) -> str:
    c = s["config"]
    lines = [f"# binllm run: ML-100K, {c['model']}", "",
             f"Test sample: {s['test_rows']} rows ({s['test_rows_warm']} warm = user and item seen in train); "
             f"LLM tuning on {c['train_rows'] or 'all'} train rows, model selection on {c['valid_rows'] or 'all'} "
             f"valid_small rows; step 1 {c['step1_steps']} steps (lr {c['step1_lr']}), step 2 {c['step2_steps']} "
             f"steps (lr {c['step2_lr']}), batch {c['batch_size']}, {c['max_titles']} history titles.", "",
             metrics.table(s["results"]), "",
             f"Item positive-rate baseline AUC on the same rows: {s['item_positive_rate_auc']:.4f}.", "",
             "Hash model and MF on the whole test split:", "", metrics.table(s["hash_models_on_full_test"]), "",
             "Mean prompt tokens: " + ", ".join(f"{k}: {v:.0f}" for k, v in s["mean_prompt_tokens"].items()), "",
             f"Wall time: {s['seconds'] / 60:.1f} min.", ""]
    return "\n".join(lines)


def _plot(curves: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, pts in curves.items():
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("valid AUC")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
