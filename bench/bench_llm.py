"""LLM-side speed on the embedded SmolLM2: prompt tokens for bit-string vs
dotted codes, scoring throughput of binllm's Scorer against a bare forward
pass over the same token batches and against generate()-based scorers, and
LoRA tuning throughput. Writes bench/results/llm.md/.csv.

    python bench/bench_llm.py [--n 96]
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
from common import environment, timeit, write_table  # noqa: E402

from binllm import data, hashing, scoring, tuning  # noqa: E402
from binllm.codebook import CodeBook  # noqa: E402
from binllm.prompts import PromptBuilder, PromptConfig  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=96, help="prompts per scoring measurement")
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    prep = data.prepare(data.read_ml100k(), "ml-100k")
    res = hashing.train(prep, hashing.HashConfig(max_epochs=10), None, progress=False)
    cb = CodeBook.from_model(res.model, prep, {}, {})
    model, tok = scoring.load_llm("smollm2", device="cpu")
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
    timings = {
        "binllm Scorer (length-grouped, left-padded, logits_to_keep=1)": timeit(lambda: scorer.score_ids(ids), 3),
        "bare model forward over the same batches": timeit(bare, 3),
        "generate(max_new_tokens=1, output_scores) batched, unsorted": timeit(gen_batched, 3),
        "generate(max_new_tokens=2, output_scores) one prompt at a time": timeit(gen_single, 3),
    }
    t_ours = timings["binllm Scorer (length-grouped, left-padded, logits_to_keep=1)"]["median"]
    for name, t in timings.items():
        rows_out.append({"section": "scoring", "impl": name, "value": args.n / t["median"], "unit": "prompts/s",
                         "vs_binllm": t["median"] / t_ours,
                         "note": f"{args.n} prompts, {ntok / args.n:.0f} tokens each, batch {args.batch}, "
                                 f"median of {t['n']}"})
    # tuning throughput
    tmp = tempfile.mkdtemp()
    try:
        labels = prep.rows.iloc[rows[: args.n]]["label"].to_numpy()
        users = prep.rows.iloc[rows[: args.n]]["uid"].to_numpy()
        s = tuning.PromptSet(ids, labels, users)
        steps = 6
        base, tok2 = scoring.load_llm("smollm2", device="cpu")
        t = time.perf_counter()
        tuning.tune(base, tok2, s, tuning.PromptSet(ids[:8], labels[:8], users[:8]),
                    tuning.TuneConfig(batch_size=8, max_steps=steps, eval_steps=steps, warmup_steps=0), tmp,
                    progress=False)
        dt = time.perf_counter() - t
        rows_out.append({"section": "tuning", "impl": "binllm tune (LoRA r8 q,v; BCE on Yes logit)",
                         "value": steps * 8 * ntok / args.n / dt, "unit": "tokens/s",
                         "note": f"{steps} steps of batch 8 + one 8-prompt evaluation in {dt:.1f}s "
                                 f"({dt / steps:.2f} s/step)"})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_table("llm", rows_out, ["section", "impl", "value", "unit", "vs_binllm", "note"], environment(),
                "SmolLM2-135M-Instruct (dequantised from the GGUF, float32, CPU). `vs_binllm` = that route's time / "
                "binllm's time for the same prompts (> 1: binllm is faster).")
    print(open(os.path.join(os.path.dirname(__file__), "results", "llm.md")).read().split("Environment")[0])


if __name__ == "__main__":
    main()
