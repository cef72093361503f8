"""Settings search for the retrieval codes and the list anchors, on VALID rows only.

Task: rank the whole catalogue for each user knowing the train split (its items excluded), and find the
user's valid positives (binllm.cf.retrieval.ListTask(known=train, target=valid)). Every model trains on the
train split; selection by valid NDCG@10 inside the hash-model loop (list objectives), and here by valid
HR@10 across configs. Writes results/lists_search.md|json. The test split is not read.

    python tools/lists_search.py --grid broad   # objectives x widths x negatives (results/lists_search_broad.md)
    python tools/lists_search.py                # around the best of those, two seeds (lists_search_focused.md)
    python tools/lists_search.py --quick        # two configs, a check of the script
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from binllm import _io, data, metrics
from binllm.cf import anchors, hashing, retrieval  # noqa: E402


def evaluate(idx: np.ndarray, task: retrieval.ListTask) -> dict[str, float]:
    out = {}
    for k in (10, 20):
        hr, nd = metrics.list_metrics(idx, task.target_offsets, task.targets, k)
        out[f"HR@{k}"], out[f"NDCG@{k}"] = float(hr.mean()), float(nd.mean())
    return out


def implicit_rows(prep: data.Prepared, task: retrieval.ListTask, quick: bool) -> list[dict]:
    """implicit ALS and BPR (float, 64 factors) on the train positives, a small grid each."""
    rows = []
    grid = {"als": [dict(factors=64, regularization=r, iterations=15) for r in (0.01, 0.05, 0.5, 2.0)],
            "bpr": [dict(factors=64, learning_rate=lr, regularization=0.01, iterations=it)
                    for lr in (0.01, 0.05) for it in (100, 300)]}
    if quick:
        grid = {k: v[:1] for k, v in grid.items()}
    for algo, settings in grid.items():
        for kw in settings:
            t = time.perf_counter()
            u, it = anchors.implicit_factors(prep, algo, **kw)
            _, idx = retrieval.retrieve_dense(u[task.users], it, 20, task.excl_offsets, task.excl_items)
            rows.append({"model": f"implicit {algo.upper()}", "settings": kw, **evaluate(idx, task),
                         "seconds": time.perf_counter() - t})
            print(rows[-1], flush=True)
    return rows


def code_rows(prep: data.Prepared, task: retrieval.ListTask, grid: list[dict]) -> list[dict]:
    order = retrieval.popularity_order(retrieval.popularity(prep))
    rows = []
    for kw in grid:
        cfg = hashing.HashConfig(**kw)
        t = time.perf_counter()
        res = hashing.train(prep, cfg, None, progress=False, log=False)
        secs = time.perf_counter() - t
        assert isinstance(res.model, hashing.HashModel)
        uc, ic = res.model.packed_codes("user")[task.users], res.model.packed_codes("item")[1:]
        row = {"model": f"codes ({cfg.objective}, {cfg.d} bits)", "settings": kw, "best_epoch": res.best_epoch + 1,
               "valid_auc_pairs": res.best_valid_auc, "seconds": secs}
        for tie, name in ((None, "index"), (order, "popularity")):
            _, idx = retrieval.retrieve_codes(uc, ic, cfg.d, 20, task.excl_offsets, task.excl_items, tie_order=tie)
            row[f"ties by {name}"] = evaluate(idx, task)
        row.update(row["ties by popularity"])
        rows.append(row)
        print({k: v for k, v in row.items() if k != "settings"}, kw, flush=True)
        if not cfg.for_lists:
            continue
        # the popularity prior as prior bits in the codes, its weight chosen on valid (hashing.export_codes)
        u2, i2, d2, info = hashing.export_codes(res.model, prep, dataclasses.replace(cfg, prior_weight=None))
        _, idx = retrieval.retrieve_codes(u2[task.users], i2[1:], d2, 20, task.excl_offsets, task.excl_items,
                                          tie_order=order)
        row["with prior bits"] = {**evaluate(idx, task), "weight": info["prior_weight"], "bits": info["prior_bits"]}
        row["HR@10 with prior w"] = {w: t["valid_hr@10"] for w, t in info["prior_tried"].items()}
        print("  with prior bits:", row["with prior bits"], flush=True)
    return rows


def markdown(res: dict) -> str:
    lines = ["# List search: retrieval codes and anchors on valid rows", "",
             f"Task: full-catalogue lists for the {res['users']} users with valid positives not rated in train "
             "(train items excluded); targets: their valid positives. Models train on the train split only; "
             "the test split is not read. Hash-model configs select their epoch by valid NDCG@10 (list objectives) "
             "or valid AUC (bce); ties broken by train popularity unless said. CPU: " + res["cpu"] + ".", "",
             "| model | settings | HR@10 | NDCG@10 | HR@20 | HR@10 ties by index | HR@10 + prior w=0/1/2/4/8/16 | "
             "+ prior bits (w chosen by NDCG@10): HR@10, NDCG@10, w, bits | pair AUC (valid) | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        s = ", ".join(f"{k}={v}" for k, v in r["settings"].items())
        idx_hr = r.get("ties by index", {}).get("HR@10")
        pri = "/".join(f"{v:.3f}" for v in r["HR@10 with prior w"].values()) if "HR@10 with prior w" in r else ""
        wp = r.get("with prior bits")
        wps = f"{wp['HR@10']:.4f}, {wp['NDCG@10']:.4f}, {wp['weight']:g}, {wp['bits']}" if wp else ""
        lines.append(f"| {r['model']} | {s} | {r['HR@10']:.4f} | {r['NDCG@10']:.4f} | {r['HR@20']:.4f} | "
                     f"{'' if idx_hr is None else f'{idx_hr:.4f}'} | {pri} | {wps} | "
                     f"{r.get('valid_auc_pairs', float('nan')):.4f} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--grid", choices=["broad", "focused"], default="focused")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "lists_search"))
    args = ap.parse_args()
    from binllm.bench import machine

    prep = data.prepare(data.read_ml100k(), data.default_protocol("ml-100k"))
    task = retrieval.ListTask.of(prep, ("train",), "valid")
    pop = retrieval.popularity(prep)
    _, idx = retrieval.retrieve_ranked(pop.astype(np.float64), len(task.users), 20, task.excl_offsets,
                                       task.excl_items)
    rows = [{"model": "item popularity (train positives)", "settings": {}, **evaluate(idx, task), "seconds": 0.0}]
    base = dict(max_epochs=80, patience=20)
    if args.grid == "broad":  # the first pass: objectives, widths, negatives
        grid = [dict(objective="bce", d=32), dict(objective="bce", d=64)]
        for obj, extra in (("bpr", {}), ("bpr", dict(negatives=4, neg_popularity=0.5)),
                           ("softmax", dict(negatives=16)), ("softmax", dict(negatives=16, neg_popularity=0.5)),
                           ("softmax", dict(negatives=64))):
            for d in (32, 64, 128):
                grid.append(dict(objective=obj, d=d, **extra))
        grid += [dict(objective="softmax", d=64, negatives=16, lr=1e-2),
                 dict(objective="softmax", d=64, negatives=16, temperature=2.0)]
    else:  # the second pass: around the best of the first (softmax), temperature x negatives, two seeds
        grid = [dict(objective="softmax", d=64, negatives=k, temperature=t, seed=seed)
                for k, t in ((16, 1.0), (16, 2.0), (64, 1.0), (64, 2.0)) for seed in (0, 1)]
    grid = [{**base, **g} for g in grid]
    if args.quick:
        grid = [dict(objective="softmax", d=32, negatives=4, max_epochs=5), dict(objective="bce", d=32, max_epochs=5)]
    rows += implicit_rows(prep, task, args.quick)
    rows += code_rows(prep, task, grid)
    res = {"users": int(len(task.users)), "cpu": machine.cpu_model(), "rows": rows}
    out = Path(f"{args.out}_{args.grid}" + ("_quick" if args.quick else ""))
    _io.atomic_write_json(out.with_suffix(".json"), json.loads(json.dumps(res, default=float)))
    _io.atomic_write_text(out.with_suffix(".md"), markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
