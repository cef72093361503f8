"""LLM-side speed on the embedded SmolLM2: prompt tokens for bit-string vs
dotted codes, scoring throughput of binllm's Scorer against a bare forward
pass over the same token batches and against generate()-based scorers, float32
("before", version 0.1) against the bf16 compute that `dtype='auto'` picks on a
CPU with AMX ("after"), LoRA tuning throughput in both, and sharded scoring
(`torchrun ... binllm score`) on 1 vs 2 CPU processes. Writes
bench/results/llm.md/.csv.

    python bench/bench_llm.py [--n 96] [--quick]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from binllm import data, hashing, scoring, tuning  # noqa: E402
from binllm.codebook import CodeBook  # noqa: E402
from binllm.prompts import PromptBuilder, PromptConfig  # noqa: E402

from common import environment, timeit, write_table  # noqa: E402


def sharded_scoring(prep, n_rows: int) -> list[dict]:
    """`binllm score` of the same test rows in 1 process (2 threads) and under torchrun with 2 processes
    (1 thread each); the gathered scores must equal the 1-process scores."""
    import socket
    import subprocess

    from binllm import stages

    out = []
    tmp = tempfile.mkdtemp()
    try:
        prep.save(os.path.join(tmp, "data"))
        base = ["score", "--data", os.path.join(tmp, "data"), "--method", "llm", "--kind", "text", "--rows",
                str(n_rows), "--quiet", "--dtype", "float32"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(__file__)),
                                                             os.environ.get("PYTHONPATH", "")])}
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
            subprocess.run(cmd, env=e, check=True, capture_output=True)
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=96, help="prompts per scoring measurement")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--quick", action="store_true", help="a short check that every route runs")
    args = ap.parse_args()
    if args.quick:
        args.n = 16
    prep = data.prepare(data.read_ml100k(), data.default_protocol("ml-100k"))
    res = hashing.train(prep, hashing.HashConfig(max_epochs=10), None, progress=False)
    cb = CodeBook.from_model(res.model, prep, {}, {})
    model, tok = scoring.load_llm("smollm2", device="cpu", dtype="float32")
    rows_out = []
    rows = np.flatnonzero(prep.mask("test"))[:500]
    for kind in ("text", "codes", "text_codes"):
        for style in (("dotted", "bits") if kind != "text" else ("dotted",)):
            for titles in (5, 10):
                ps, _ = PromptBuilder(PromptConfig(kind=kind, code_style=style, max_titles=titles), prep.titles,
                                      cb).for_rows(prep, rows)
                lens = [len(x) for x in scoring.tokenize(tok, ps)]
                rows_out.append({"section": "tokens per prompt", "impl": f"{kind}, {style if kind != 'text' else '-'}"
                                 f", {titles} titles", "value": float(np.mean(lens)), "unit": "tokens (mean)",
                                 "note": f"min {min(lens)}, max {max(lens)}, 500 test rows"})
    ps, _ = PromptBuilder(PromptConfig(kind="text_codes", max_titles=5), prep.titles, cb).for_rows(prep, rows[: args.n])
    ids = scoring.tokenize(tok, ps)
    ntok = sum(len(x) for x in ids)
    scorer = scoring.Scorer(model, tok, batch_size=args.batch)
    ours = scorer.score_ids(ids)
    # bare forward: the same length-sorted batches, pre-collated, only the model call timed
    order = np.argsort([len(x) for x in ids], kind="stable")
    batches = [scoring.collate_left([ids[i] for i in order[b:b + args.batch]], tok.pad_token_id)
               for b in range(0, len(ids), args.batch)]

    def bare():
        with torch.inference_mode():
            for t, m, p in batches:
                model(input_ids=t, attention_mask=m, position_ids=p, logits_to_keep=1, use_cache=False)

    def gen_batched():
        out = np.empty(len(ids), np.float32)
        with torch.inference_mode():
            for b in range(0, len(ids), args.batch):
                enc = tok(ps[b:b + args.batch], add_special_tokens=False, return_tensors="pt", padding=True)
                g = model.generate(**enc, max_new_tokens=1, do_sample=False, output_scores=True,
                                   return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
                out[b:b + args.batch] = g.scores[0][:, scorer.yes_id].float().numpy()
        return out

    def gen_single():
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
    reps = 1 if args.quick else 3
    fast_bf16 = scoring.cpu_has_fast_bf16()
    model16, _ = scoring.load_llm("smollm2", device="cpu", dtype="bfloat16")
    scorer16 = scoring.Scorer(model16, tok, batch_size=args.batch)
    s16 = scorer16.score_ids(ids)
    # bf16 scores rank like the float32 ones (the AUC-relevant property)
    agree = float(np.corrcoef(ours, s16)[0, 1])
    timings = {
        f"binllm Scorer, bf16 weights (dtype='auto' on this CPU: {'bf16' if fast_bf16 else 'float32'})":
            timeit(lambda: scorer16.score_ids(ids), reps),
        "binllm Scorer (length-grouped, left-padded, logits_to_keep=1)": timeit(lambda: scorer.score_ids(ids), reps),
        "bare model forward over the same batches": timeit(bare, reps),
        "generate(max_new_tokens=1, output_scores) batched, unsorted": timeit(gen_batched, reps),
        "generate(max_new_tokens=2, output_scores) one prompt at a time": timeit(gen_single, reps),
    }
    t_ours = timings["binllm Scorer (length-grouped, left-padded, logits_to_keep=1)"]["median"]
    for name, t in timings.items():
        rows_out.append({"section": "scoring", "impl": name, "value": args.n / t["median"], "unit": "prompts/s",
                         "vs_binllm": t["median"] / t_ours,
                         "note": f"{args.n} prompts, {ntok / args.n:.0f} tokens each ({ntok / t['median']:.0f} "
                                 f"tokens/s), batch {args.batch}, median of {t['n']}"
                                 + (f"; Pearson r with float32 scores {agree:.4f}" if "bf16" in name else "")})
    # tuning throughput: float32 (0.1's CPU path) vs bf16 autocast with float32 weights (the CPU path now)
    labels = prep.rows.iloc[rows[: args.n]]["label"].to_numpy()
    users = prep.rows.iloc[rows[: args.n]]["uid"].to_numpy()
    s = tuning.PromptSet(ids, labels, users)
    steps = 2 if args.quick else 6
    for name, bf16 in (("float32", False), ("bf16 autocast, float32 weights", True)):
        tmp = tempfile.mkdtemp()
        try:
            base, tok2 = scoring.load_llm("smollm2", device="cpu", dtype="float32")
            t = time.perf_counter()
            tuning.tune(base, tok2, s, tuning.PromptSet(ids[:8], labels[:8], users[:8]),
                        tuning.TuneConfig(batch_size=8, max_steps=steps, eval_steps=steps, warmup_steps=0), tmp,
                        progress=False, bf16=bf16)
            dt = time.perf_counter() - t
            rows_out.append({"section": "tuning", "impl": f"binllm tune (LoRA r8 q,v; BCE on Yes logit), {name}",
                             "value": steps * 8 * ntok / args.n / dt, "unit": "tokens/s",
                             "note": f"{steps} steps of batch 8 + one 8-prompt evaluation in {dt:.1f}s "
                                     f"({dt / steps:.2f} s/step)"})
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    rows_out += sharded_scoring(prep, 12 if args.quick else 64)
    write_table("llm", rows_out, ["section", "impl", "value", "unit", "vs_binllm", "note"], environment(),
                "SmolLM2-135M-Instruct (dequantised from the GGUF, CPU). `vs_binllm` = that route's time / "
                "the float32 Scorer's time for the same prompts (> 1: the Scorer is faster; < 1: that route is "
                "faster). 'Before' is version 0.1's float32 path; 'after' is dtype='auto', which picks bf16 "
                "only on CPUs with AMX (amx_bf16 flag), else float32.")
    print(open(os.path.join(os.path.dirname(__file__), "results", "llm.md")).read().split("Environment")[0])


if __name__ == "__main__":
    main()
