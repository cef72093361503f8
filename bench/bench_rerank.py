"""Re-ranking throughput: candidates scored per second by the prefix-cached scorer
(binllm.llm.prefix_scoring.PrefixScorer) vs the full-prompt scorer (binllm.llm.scoring.Scorer), on the same
BinLLM prompts (text + codes template), embedded SmolLM2-135M-Instruct, CPU, float32.

Prompts: ML-100K users with train history, each with N candidate items drawn at random (the
prompt lengths are what matter; a random 32-bit code book fills the code fields). Both scorers get
the same token ids; their scores are checked to agree before timing.

    python bench/bench_rerank.py            # 8 users x 50 candidates, 5 history titles
    python bench/bench_rerank.py --quick    # 2 users x 16 candidates, one timed repeat
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--candidates", type=int, default=50)
    ap.add_argument("--max-titles", type=int, default=5, help="history titles per prompt (binllm run's default)")
    ap.add_argument("--kind", default="text_codes", choices=["text", "text_codes", "codes"])
    ap.add_argument("--batch-size", type=int, default=16, help="full scorer: prompts per forward pass")
    ap.add_argument("--prefix-batch-size", type=int, default=16,
                    help="prefix scorer: suffixes per forward pass (sorted by length, so little padding)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.users, args.candidates, args.repeats = 2, 16, 1
    import torch

    from binllm import data
    from binllm.cf.codebook import CodeBook
    from binllm.llm import scoring
    from binllm.llm.prefix_scoring import PrefixScorer
    from binllm.llm.prompts import PromptBuilder, PromptConfig

    from common import environment, timeit, write_table

    if args.threads:
        torch.set_num_threads(args.threads)
    prep = data.prepare(data.read_ml100k(), data.default_protocol("ml-100k"))
    rng = np.random.default_rng(0)
    cb = CodeBook(rng.integers(0, 256, (prep.n_user_slots, 4), dtype=np.uint8),
                  rng.integers(0, 256, (prep.n_item_slots, 4), dtype=np.uint8), 32, prep.user_ids, prep.item_ids)
    pc = PromptConfig(kind=args.kind, max_titles=args.max_titles)
    builder = PromptBuilder(pc, prep.titles, cb if pc.uses_codes else None)
    model, tok = scoring.load_llm("smollm2", dtype="float32", device="cpu", progress=False)

    tr = prep.split("train")
    liked = tr[tr["label"] == 1]
    counts = liked.groupby("uid").size()
    users = rng.choice(counts.index[counts >= args.max_titles].to_numpy(), args.users, replace=False)
    groups = []
    for u in users:
        hist = liked["iid"][liked["uid"] == u].to_numpy()[-args.max_titles:]
        items = rng.choice(np.arange(1, prep.n_item_slots), args.candidates, replace=False)
        groups.append(scoring.tokenize(tok, builder.build([u] * len(items), items, [hist] * len(items))))
    flat = [x for g in groups for x in g]
    n = len(flat)
    full = scoring.Scorer(model, tok, batch_size=args.batch_size)
    pref = PrefixScorer(model, tok, batch_size=args.prefix_batch_size)

    a = full.score_ids(flat)
    b = np.concatenate(pref.score_groups(groups))
    diff = float(np.abs(a - b).max())
    if diff > 1e-3:
        raise SystemExit(f"prefix-cached scores differ from full-prompt scores by {diff}")
    from binllm.llm.prefix_scoring import common_prefix_len

    shared = float(np.mean([min(common_prefix_len(g), min(map(len, g)) - 1) for g in groups]))
    mean_len = float(np.mean([len(x) for x in flat]))
    print(f"agreement: max |diff| {diff:.2e} over {n} prompts; mean prompt {mean_len:.0f} tokens, "
          f"shared prefix {shared:.0f}", flush=True)

    t_full = timeit(lambda: full.score_ids(flat), repeats=args.repeats, warmup=0, budget_s=600)
    t_pref = timeit(lambda: pref.score_groups(groups), repeats=args.repeats, warmup=0, budget_s=600)
    rows = [
        {"impl": "PrefixScorer (prefix once per user, suffixes batched on its KV cache)",
         "candidates_per_s": n / t_pref["median"], "seconds": t_pref["median"],
         "spread": f"{t_pref['min']:.2f}-{t_pref['max']:.2f}",
         "speedup": t_full["median"] / t_pref["median"], "repeats": t_pref["n"]},
        {"impl": f"Scorer (full prompts, length-grouped batches of {args.batch_size})",
         "candidates_per_s": n / t_full["median"], "seconds": t_full["median"],
         "spread": f"{t_full['min']:.2f}-{t_full['max']:.2f}",
         "speedup": 1.0, "repeats": t_full["n"]},
    ]
    env = environment()
    env["torch_threads"] = torch.get_num_threads()
    notes = f"""
SmolLM2-135M-Instruct (embedded GGUF, dequantised), float32, CPU ({env['cpu']}, {env['threads']['usable']} cores,
{torch.get_num_threads()} torch threads). {args.users} ML-100K users x {args.candidates} random candidates =
{n} prompts, template '{args.kind}' with {args.max_titles} history titles and 32-bit dotted codes; mean prompt
{mean_len:.0f} tokens, of which {shared:.0f} are the shared per-user prefix. Scores agree to {diff:.1e} (max |diff|).
`speedup` = full-prompt time / prefix-cached time; target >= 2.5x. Median of the repeats (no warm-up run;
the model is loaded and used once before timing for the agreement check).
Command: `python {' '.join(sys.argv)}`.
"""
    name = "rerank_quick" if args.quick else "rerank"
    path = write_table(name, rows, ["impl", "candidates_per_s", "seconds", "spread", "speedup", "repeats"], env, notes)
    print(path.read_text())


if __name__ == "__main__":
    main()
