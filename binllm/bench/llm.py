"""The llm suite: LLM-side speed on the embedded SmolLM2. Prompt tokens for
bit-string vs dotted codes; scoring throughput of binllm's Scorer against a
bare forward pass over the same token batches and against generate()-based
scorers (which must give the Scorer's scores first), float32 (version 0.1's
path) against the bf16 compute that ``dtype='auto'`` picks on a CPU with AMX;
LoRA tuning throughput in both; and sharded scoring (``torchrun ... binllm
score``) on 1 vs 2 CPU processes.

Scoring and tuning rows are set against a measured torch matmul rate of the
same dtype and thread count (:func:`binllm.bench.machine.matmul_flops`),
counting about 2 FLOPs per non-embedding parameter per token for a forward
pass and 4 for a LoRA training step (forward + input gradients; the frozen
weights get no weight gradient); attention over the sequence adds a few
percent that is not counted, so ``frac_limit`` is slightly low.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import data, hashing, scoring, tuning
from ..codebook import CodeBook
from ..prompts import PromptBuilder, PromptConfig
from . import machine, report
from .report import Row, bound_by, timeit

COLUMNS = ["section", "impl", "value", "unit", "vs_binllm", "frac_limit", "bound", "note"]


def sharded_scoring(prep: data.Prepared, n_rows: int) -> list[Row]:
    """`binllm score` of the same test rows in 1 process (2 threads) and under torchrun with 2 processes
    (1 thread each); the gathered scores must equal the 1-process scores."""
    from .. import stages

    out: list[Row] = []
    tmp = tempfile.mkdtemp()
    try:
        prep.save(os.path.join(tmp, "data"))
        base = ["score", "--data", os.path.join(tmp, "data"), "--method", "llm", "--kind", "text", "--rows",
                str(n_rows), "--quiet", "--dtype", "float32"]
        pkg_parent = str(Path(__file__).resolve().parents[2])
        env = {**os.environ,
               "PYTHONPATH": os.pathsep.join(p for p in (pkg_parent, os.environ.get("PYTHONPATH")) if p)}
        res = {}
        for procs in (1, 2):
            f = os.path.join(tmp, f"s{procs}.npz")
            if procs == 1:
                cmd = [sys.executable, "-m", "binllm", *base, "--out", f]
                e = {**env, "OMP_NUM_THREADS": "2"}
            else:
                with socket.socket() as so:
                    so.bind(("127.0.0.1", 0))
                    port = so.getsockname()[1]
                cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                       str(port), "-m", "binllm", *base, "--out", f]
                e = {**env, "OMP_NUM_THREADS": "1"}
            t = time.perf_counter()
            subprocess.run(cmd, env=e, check=True, capture_output=True, cwd=pkg_parent)
            res[procs] = time.perf_counter() - t
        s1, s2 = stages.read_scores(os.path.join(tmp, "s1.npz"))[1], stages.read_scores(os.path.join(tmp, "s2.npz"))[1]
        np.testing.assert_allclose(s2, s1, rtol=1e-3, atol=1e-3)
        for procs, dt in res.items():
            out.append({"section": "sharded scoring", "impl": f"binllm score, {procs} process(es) x {3 - procs} "
                        f"thread(s)", "value": n_rows / dt, "unit": "prompts/s (whole command)",
                        "vs_binllm": dt / res[1], "note": f"{n_rows} text prompts, {dt:.1f}s including model load; "
                        "gathered scores equal the 1-process scores"})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def forward_params(model: Any) -> int:
    """Parameters a token's forward pass multiplies with: all but the embeddings (a lookup)."""
    return sum(p.numel() for n, p in model.named_parameters() if "embed" not in n)


def run(out_dir: str | Path, quick: bool = False, n: int = 96, batch: int = 16, progress: bool = True) -> Path:
    """Runs the llm suite (`n` prompts a scoring measurement; 16 with `quick`) and writes
    ``out_dir/llm[_quick].md|csv|png``; returns the .md path."""
    if quick:
        n = 16
    say = report.Say("llm", progress)
    _, facts = machine.start(say, {1, machine.hardware_threads()}, ("numpy", "torch", "transformers", "peft"))
    threads = torch.get_num_threads()
    say(f"torch matmul rates at {threads} thread(s)")
    # the best at 1 thread or all: more threads can always do what fewer did (a shared machine's noise)
    flops = {dt: max(machine.matmul_flops(dt, t) for t in sorted({1, threads})) for dt in ("float32", "bfloat16")}
    facts["torch_matmul_GFLOPs"] = {"threads": threads, **{dt: round(v / 1e9, 1) for dt, v in flops.items()}}
    say("ML-100K, a short hash model, SmolLM2 float32")
    prep = data.prepare(data.read_ml100k(), data.default_protocol("ml-100k"))
    res = hashing.train(prep, hashing.HashConfig(max_epochs=10), None, progress=False)
    assert isinstance(res.model, hashing.HashModel)  # HashConfig's default model is "hash"
    cb = CodeBook.from_model(res.model, prep, {}, {})
    model, tok = scoring.load_llm("smollm2", device="cpu", dtype="float32")
    params = forward_params(model)
    rows_out: list[Row] = []
    rows = np.flatnonzero(prep.mask("test"))[:500]
    say("prompt tokens")
    for kind in ("text", "codes", "text_codes"):
        for style in (("dotted", "bits") if kind != "text" else ("dotted",)):
            for titles in (5, 10):
                ps, _ = PromptBuilder(PromptConfig(kind=kind, code_style=style, max_titles=titles), prep.titles,
                                      cb).for_rows(prep, rows)
                lens = [len(x) for x in scoring.tokenize(tok, ps)]
                rows_out.append({"section": "tokens per prompt", "impl": f"{kind}, {style if kind != 'text' else '-'}"
                                 f", {titles} titles", "value": float(np.mean(lens)), "unit": "tokens (mean)",
                                 "note": f"min {min(lens)}, max {max(lens)}, 500 test rows"})
    ps, _ = PromptBuilder(PromptConfig(kind="text_codes", max_titles=5), prep.titles, cb).for_rows(prep, rows[:n])
    ids = scoring.tokenize(tok, ps)
    ntok = sum(len(x) for x in ids)
    scorer = scoring.Scorer(model, tok, batch_size=batch)
    ours = scorer.score_ids(ids)
    # bare forward: the same length-sorted batches, pre-collated, only the model call timed
    order = np.argsort([len(x) for x in ids], kind="stable")
    batches = [scoring.collate_left([ids[i] for i in order[b:b + batch]], tok.pad_token_id)
               for b in range(0, len(ids), batch)]

    def bare() -> None:
        with torch.inference_mode():
            for t, m, p in batches:
                model(input_ids=t, attention_mask=m, position_ids=p, logits_to_keep=1, use_cache=False)

    def gen_batched() -> np.ndarray:
        out = np.empty(len(ids), np.float32)
        with torch.inference_mode():
            for b in range(0, len(ids), batch):
                enc = tok(ps[b:b + batch], add_special_tokens=False, return_tensors="pt", padding=True)
                g = model.generate(**enc, max_new_tokens=1, do_sample=False, output_scores=True,
                                   return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
                out[b:b + batch] = g.scores[0][:, scorer.yes_id].float().numpy()
        return out

    def gen_single() -> np.ndarray:
        out = np.empty(len(ids), np.float32)
        with torch.inference_mode():
            for k, p in enumerate(ps):
                enc = tok(p, add_special_tokens=False, return_tensors="pt")
                g = model.generate(**enc, max_new_tokens=2, do_sample=False, output_scores=True,
                                   return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
                out[k] = g.scores[0][0, scorer.yes_id].float()
        return out

    # the generate() routes must agree with the Scorer (greedy first-step logits)
    np.testing.assert_allclose(gen_single(), ours, rtol=1e-3, atol=1e-3)
    reps = 1 if quick else 3
    fast_bf16 = scoring.cpu_has_fast_bf16()
    say("SmolLM2 bf16")
    model16, _ = scoring.load_llm("smollm2", device="cpu", dtype="bfloat16")
    scorer16 = scoring.Scorer(model16, tok, batch_size=batch)
    s16 = scorer16.score_ids(ids)
    # bf16 scores rank like the float32 ones (the AUC-relevant property)
    agree = float(np.corrcoef(ours, s16)[0, 1])
    bf16_name = f"binllm Scorer, bf16 weights (dtype='auto' on this CPU: {'bf16' if fast_bf16 else 'float32'})"
    ours_name = "binllm Scorer (length-grouped, left-padded, last position only)"
    say(f"scoring {n} prompts, {reps} repeat(s) a route")
    timings = {
        bf16_name: timeit(lambda: scorer16.score_ids(ids), reps),
    }
    # The run scores through a LoRA adapter (peft, unmerged): the base weights are frozen, which is where the
    # int logits_to_keep=1 made torch copy the output embedding once per prompt (scoring.keep_last).
    from peft import get_peft_model

    peft16 = get_peft_model(model16, tuning.lora_config(tuning.TuneConfig()))
    scorer_lora = scoring.Scorer(peft16, tok, batch_size=batch)

    def lora_int_keep() -> None:  # the same batches through the adapter with the int (before the fix)
        with torch.inference_mode():
            for t, m, p in batches:
                peft16(input_ids=t, attention_mask=m, position_ids=p, logits_to_keep=1, use_cache=False)

    timings.update({
        "binllm Scorer, bf16 weights + LoRA adapter (peft, unmerged; as `binllm score` runs)":
            timeit(lambda: scorer_lora.score_ids(ids), reps),
        "bf16 + LoRA adapter, bare forward with the int logits_to_keep=1 (before)": timeit(lora_int_keep, reps),
        ours_name: timeit(lambda: scorer.score_ids(ids), reps),
        "bare model forward over the same batches": timeit(bare, reps),
        "generate(max_new_tokens=1, output_scores) batched, unsorted": timeit(gen_batched, reps),
        "generate(max_new_tokens=2, output_scores) one prompt at a time": timeit(gen_single, reps),
    })
    t_ours = timings[ours_name]["median"]
    for name, t in timings.items():
        dt = "bfloat16" if "bf16" in name else "float32"
        lim = [(f"torch {dt} matmul rate", flops[dt] / (2 * params * ntok / n))]
        rows_out.append({"section": "scoring", "impl": name, "value": n / t["median"], "unit": "prompts/s",
                         "vs_binllm": t["median"] / t_ours, **bound_by(n / t["median"], lim),
                         "note": f"{n} prompts, {ntok / n:.0f} tokens each ({ntok / t['median']:.0f} "
                                 f"tokens/s), batch {batch}, median of {int(t['n'])}"
                                 + (f"; Pearson r with float32 scores {agree:.4f}" if name == bf16_name else "")})
    # tuning throughput, side by side: 0.1's CPU path (float32, the model's fused attention, shuffled batches),
    # session 2's (bf16 autocast), and today's (+ eager attention, length-grouped batches; then without LoRA dropout)
    labels = prep.rows.iloc[rows[:n]]["label"].to_numpy()
    users = prep.rows.iloc[rows[:n]]["uid"].to_numpy()
    s = tuning.PromptSet(ids, labels, users)
    steps = n // 8  # every prompt once, so each variant trains on the same tokens
    tune_variants = [  # name, bf16 autocast, attention (None: the model's default), grouped batches, LoRA dropout
        ("float32 (0.1)", False, None, False, 0.05),
        ("bf16 autocast, float32 weights", True, None, False, 0.05),
        ("bf16 autocast + eager attention + length-grouped batches", True, "eager", True, 0.05),
        ("... + LoRA dropout 0", True, "eager", True, 0.0)]
    base_rate = None
    for name, bf16, attn, grouped, dropout in tune_variants:
        say(f"tuning, {name}, {steps} steps")
        tmp = tempfile.mkdtemp()
        try:
            base, tok2 = scoring.load_llm("smollm2", device="cpu", dtype="float32", attn_implementation=attn)
            t0 = time.perf_counter()
            tuning.tune(base, tok2, s, tuning.PromptSet(ids[:8], labels[:8], users[:8]),
                        tuning.TuneConfig(batch_size=8, max_steps=steps, eval_steps=steps, warmup_steps=0,
                                          group_by_length=grouped, lora_dropout=dropout), tmp,
                        progress=False, bf16=bf16, use_cpu=True)
            dt_s = time.perf_counter() - t0
            rate = steps * 8 * ntok / n / dt_s
            base_rate = base_rate or rate
            dt = "bfloat16" if bf16 else "float32"
            rows_out.append({"section": "tuning", "impl": f"binllm tune (LoRA r8 q,v; BCE on Yes logit), {name}",
                             "value": rate, "unit": "tokens/s", "vs_binllm": base_rate / rate,
                             **bound_by(rate, [(f"torch {dt} matmul rate", flops[dt] / (4 * params))]),
                             "note": f"{steps} steps of batch 8 + one 8-prompt evaluation in {dt_s:.1f}s "
                                     f"({dt_s / steps:.2f} s/step; {rate / base_rate:.2f}x the float32 path; "
                                     "tokens/s counts prompt tokens, not padding)"})
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    say("sharded scoring: 1 process vs torchrun with 2")
    rows_out += sharded_scoring(prep, 12 if quick else 64)
    name = "llm_quick" if quick else "llm"
    notes = (f"`binllm bench llm{' --quick' if quick else ''}`. SmolLM2-135M-Instruct (dequantised from the GGUF, "
             "CPU). `vs_binllm` = that route's time / the float32 Scorer's time for the same prompts (> 1: the "
             "Scorer is faster; < 1: that route is faster). 'Before' is version 0.1's float32 path; 'after' is "
             "dtype='auto', which picks bf16 only on CPUs with AMX (amx_bf16 flag), else float32. `frac_limit`: "
             f"tokens/s x FLOPs a token ({params / 1e6:.0f}M non-embedding parameters x 2 for scoring, x 4 for a "
             f"LoRA step) over the measured torch matmul rate at {threads} thread(s) "
             f"(float32 {flops['float32'] / 1e9:.0f}, bf16 {flops['bfloat16'] / 1e9:.0f} GFLOP/s, 2048^3). Token "
             "counts and the whole-command sharded rows have none.")
    path = report.write_table(out_dir, name, rows_out, COLUMNS, facts, notes)
    report.bar_plot(Path(out_dir) / f"{name}.png", rows_out, "impl", "value", "llm", group="section")
    return path
