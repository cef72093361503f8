"""The llm suite: LLM-side speed on the embedded SmolLM2, set against the machine's limit at
the model's own shapes. Prompt tokens for bit-string vs dotted codes; scoring throughput
of binllm's Scorer (with a LoRA adapter unmerged, and merged as `binllm score` does in
float32) against a bare forward pass and generate()-based scorers; LoRA tuning throughput
of version 0.1's CPU path, 0.2's, and without LoRA dropout; sharded scoring
(``torchrun ... binllm score``) on 1 vs 2 CPU processes.

Only the dtypes this CPU would use run: float32 everywhere, and bf16 where the CPU has
AMX (``dtype='auto'`` picks it there); emulated bf16 (AVX2-only CPUs) is never timed.

Limits (:mod:`binllm.bench.machine`): torch's matmul rate at 2048^3 for reference, and at
the model's shapes (one decoder layer's seven linear maps at the token count of a scoring
batch and of a tuning step), the better of OpenMP threads and binllm's worker threads.
``frac_limit`` = the row's rate x FLOPs a token / the model-shape limit of its dtype and
stage, FLOPs counted as 2 per non-embedding parameter a token for a forward pass and 4 for
a LoRA step (forward + input gradients; frozen weights get no weight gradient). Not
counted: attention over the sequence (a few percent), the LM head (one position a prompt),
LoRA's own small matmuls. So 1.0 is what the matmuls of that shape allow.
"""
from __future__ import annotations

import functools
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

from binllm import data
from binllm.bench import machine, report
from binllm.bench.report import Row, bound_by, timeit
from binllm.cf import hashing
from binllm.cf.codebook import CodeBook
from binllm.llm import scoring, tuning
from binllm.llm.prompts import PromptBuilder, PromptConfig

COLUMNS = ["section", "impl", "value", "unit", "vs_binllm", "frac_limit", "bound", "note"]


def sharded_scoring(prep: data.Prepared, n_rows: int) -> list[Row]:
    """`binllm score` of the same test rows in 1 process (2 threads) and under torchrun with 2 processes
    (1 thread each); the gathered scores must equal the 1-process scores."""
    from binllm.run import stages

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


def dtypes_used() -> list[str]:
    """The compute dtypes this CPU would run: float32, and bf16 where it has AMX or AVX-512 BF16 (dtype='auto')."""
    return ["float32", "bfloat16"] if scoring.cpu_has_fast_bf16() else ["float32"]


def run(out_dir: str | Path, quick: bool = False, n: int = 96, batch: int = 16, progress: bool = True) -> Path:
    """Runs the llm suite (`n` prompts a scoring measurement; 16 with `quick`) and writes
    ``out_dir/llm[_quick].md|csv|png``; returns the .md path."""
    if quick:
        n = 16
    say = report.Say("llm", progress)
    facts = machine.facts(None, ("numpy", "torch", "transformers", "peft"))
    for line in machine.summary(facts):
        say(line)
    threads = torch.get_num_threads()
    dtypes = dtypes_used()
    reps = 1 if quick else 3
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
    tune_batch = 8
    # the limits: 2048^3 for reference, and the model's shapes at a scoring batch and a tuning step
    shapes = machine.layer_shapes(model.config)
    limit: dict[tuple[str, str], float] = {}
    for dt in dtypes:
        say(f"torch matmul rates, {dt}, {threads} thread(s): 2048^3 and the model's shapes")
        big = max(machine.matmul_flops(dt, t, repeats=3 if quick else 10) for t in sorted({1, threads}))
        rows_out.append({"section": "limit", "impl": f"torch matmul {dt}, 2048^3", "value": big / 1e9,
                         "unit": "GFLOP/s", "note": f"best of 1 and {threads} threads (reference only)"})
        for stage, tokens in (("scoring", batch * ntok // n), ("tuning", tune_batch * ntok // n)):
            lim = machine.model_matmul_flops(shapes, tokens, dt, threads, repeats=3 if quick else 5)
            limit[(dt, stage)] = lim
            rows_out.append({"section": "limit", "impl": f"model shapes {dt}, {stage} ({tokens} tokens)",
                             "value": lim / 1e9, "unit": "GFLOP/s",
                             "note": f"one layer's q,k,v,o,gate,up,down {shapes} at {tokens} tokens, "
                                     f"{threads} threads: OpenMP or worker threads, the better"})
    scorer = scoring.Scorer(model, tok, batch_size=batch)
    ours = scorer.score_ids(ids)
    # bare forward: the same length-sorted batches, pre-collated, only the model call timed
    order = np.argsort([len(x) for x in ids], kind="stable")
    batches = [scoring.collate_left([ids[i] for i in order[b:b + batch]], tok.pad_token_id)
               for b in range(0, len(ids), batch)]

    def bare() -> None:
        with torch.inference_mode():
            for t, m, p in batches:
                scoring.last_logits(model, t, m, p)

    def gen_single() -> np.ndarray:
        out = np.empty(len(ids), np.float32)
        with torch.inference_mode():
            for k, p in enumerate(ps):
                enc = tok(p, add_special_tokens=False, return_tensors="pt")
                g = model.generate(**enc, max_new_tokens=1, do_sample=False, output_scores=True,
                                   return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
                out[k] = g.scores[0][0, scorer.yes_id].float()
        return out

    # a generate() route must agree with the Scorer (greedy first-step logits)
    np.testing.assert_allclose(gen_single(), ours, rtol=1e-3, atol=1e-3)
    from peft import get_peft_model

    timings: dict[str, tuple[str, dict[str, float]]] = {}
    for dt in dtypes:
        m_dt = model if dt == "float32" else scoring.load_llm("smollm2", device="cpu", dtype=dt)[0]
        base_name = f"binllm Scorer, {dt} weights, no adapter"
        say(f"scoring {n} prompts, {dt}, {reps} repeat(s) a route")
        s_plain = scoring.Scorer(m_dt, tok, batch_size=batch)
        timings[base_name] = (dt, timeit(functools.partial(s_plain.score_ids, ids), reps))
        lora = get_peft_model(m_dt, tuning.lora_config(tuning.TuneConfig()))
        for p_ in lora.parameters():  # a tuned adapter is not zero: random B so merging changes the weights
            if p_.requires_grad:
                torch.nn.init.normal_(p_, std=0.02)
        s_lora = scoring.Scorer(lora, tok, batch_size=batch)
        unmerged = s_lora.score_ids(ids)
        timings[f"Scorer + LoRA adapter, {dt}, unmerged (peft)"] = (dt, timeit(functools.partial(s_lora.score_ids,
                                                                                                   ids), reps))
        if dt == "float32":
            merged_model = lora.merge_and_unload()
            s_merged = scoring.Scorer(merged_model, tok, batch_size=batch)
            np.testing.assert_allclose(s_merged.score_ids(ids), unmerged, rtol=1e-4, atol=1e-4)
            timings["Scorer + LoRA adapter, float32, merged (as `binllm score` runs)"] = (
                dt, timeit(lambda: s_merged.score_ids(ids), reps))
            model, _ = scoring.load_llm("smollm2", device="cpu", dtype="float32")  # merge changed the weights
            scorer = scoring.Scorer(model, tok, batch_size=batch)
    if not quick:
        timings["bare model forward over the same batches, float32, one batch at a time"] = ("float32",
                                                                                             timeit(bare, reps))
        timings["generate(max_new_tokens=1, output_scores) one prompt at a time, float32"] = (
            "float32", timeit(gen_single, reps))
    t_ref = timings["binllm Scorer, float32 weights, no adapter"][1]["median"]
    for name, (dt, t) in timings.items():
        rate = n / t["median"]
        rows_out.append({"section": "scoring", "impl": name, "value": rate, "unit": "prompts/s",
                         "vs_binllm": t["median"] / t_ref,
                         **bound_by(rate, [(f"model-shape {dt} matmul rate", limit[(dt, "scoring")]
                                            / (2 * params * ntok / n))]),
                         "note": f"{n} prompts, {ntok / n:.0f} tokens each ({ntok / t['median']:.0f} tokens/s), "
                                 f"batch {batch}, median of {int(t['n'])}"})
    # tuning throughput, side by side: 0.1's CPU path (float32, the model's fused attention, shuffled batches),
    # 0.2's (eager attention, length-grouped batches), and without LoRA dropout; bf16 autocast on AMX only
    labels = prep.rows.iloc[rows[:n]]["label"].to_numpy()
    users = prep.rows.iloc[rows[:n]]["uid"].to_numpy()
    s = tuning.PromptSet(ids, labels, users)
    steps = max(2, n // tune_batch)
    tune_variants = [("float32, sdpa attention, shuffled batches (0.1)", False, None, False, 0.05),
                     ("float32, eager attention, length-grouped batches (0.2)", False, "eager", True, 0.05),
                     ("float32, ... + LoRA dropout 0", False, "eager", True, 0.0)]
    if "bfloat16" in dtypes:
        tune_variants += [("bf16 autocast, eager, grouped (0.2 on AMX)", True, "eager", True, 0.05),
                          ("bf16 autocast, ... + LoRA dropout 0", True, "eager", True, 0.0)]
    base_rate = None
    for name, bf16, attn, grouped, dropout in tune_variants:
        say(f"tuning, {name}, {steps} steps")
        tmp = tempfile.mkdtemp()
        try:
            base, tok2 = scoring.load_llm("smollm2", device="cpu", dtype="float32", attn_implementation=attn)
            t0 = time.perf_counter()
            tuning.tune(base, tok2, s, tuning.PromptSet(ids[:8], labels[:8], users[:8]),
                        tuning.TuneConfig(batch_size=tune_batch, max_steps=steps, eval_steps=steps, warmup_steps=0,
                                          group_by_length=grouped, lora_dropout=dropout), tmp,
                        progress=False, bf16=bf16, use_cpu=True)
            dt_s = time.perf_counter() - t0
            rate = steps * tune_batch * ntok / n / dt_s
            base_rate = base_rate or rate
            dt = "bfloat16" if bf16 else "float32"
            rows_out.append({"section": "tuning", "impl": f"binllm tune (LoRA r8 q,v; BCE on Yes logit), {name}",
                             "value": rate, "unit": "tokens/s", "vs_binllm": base_rate / rate,
                             **bound_by(rate, [(f"model-shape {dt} matmul rate",
                                                limit[(dt, "tuning")] / (4 * params))]),
                             "note": f"{steps} steps of batch {tune_batch} + one 8-prompt evaluation in "
                                     f"{dt_s:.1f}s "
                                     f"({dt_s / steps:.2f} s/step; {rate / base_rate:.2f}x the 0.1 path; "
                                     "tokens/s counts prompt tokens, not padding)"})
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if not quick:
        say("sharded scoring: 1 process vs torchrun with 2")
        rows_out += sharded_scoring(prep, 64)
    name = "llm_quick" if quick else "llm"
    lims = ", ".join(f"{dt} {stage} {v / 1e9:.0f}" for (dt, stage), v in limit.items())
    notes = (f"`binllm bench llm{' --quick' if quick else ''}`. SmolLM2-135M-Instruct (dequantised from the GGUF, "
             f"CPU), dtypes run: {', '.join(dtypes)} (bf16 only on CPUs with AMX or AVX-512 BF16, where "
             "dtype='auto' picks it). "
             "`vs_binllm` = that route's time / the reference row's (scoring: the float32 Scorer without adapter; "
             "tuning: the 0.1 path); > 1: the reference is faster. `frac_limit`: tokens/s x FLOPs a token "
             f"({params / 1e6:.0f}M non-embedding parameters x 2 for scoring, x 4 for a LoRA step; attention, the "
             "LM head at one position and LoRA's own matmuls not counted) over the measured torch matmul rate at "
             f"the model's shapes ({lims} GFLOP/s; rows of section 'limit'), at {threads} thread(s)."
             + (" Quick mode: one repeat, few prompts: a check of the suite, not a measurement." if quick else ""))
    path = report.write_table(out_dir, name, rows_out, COLUMNS, facts, notes)
    report.bar_plot(Path(out_dir) / f"{name}.png", [r for r in rows_out if r["section"] != "limit"], "impl",
                    "value", "llm", group="section")
    return path
