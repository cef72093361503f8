"""Hash-model training speed: binllm's whole-tensor loop against a reference-style
loop (a torch DataLoader over rows with per-row __getitem__, float +-1 codes),
on ML-100K and on a generated 1M-row dataset. Same model, same batch size.
Writes bench/results/hashing.md/.csv.

``--balance`` instead measures the optional bit-balance / decorrelation
regularisers (HashConfig.balance_weight / decorr_weight): valid AUC, test AUC,
item bit entropy and distinct item codes over a few seeds, on ML-100K's global
time split (``ml-100k``) and on a per-user time split (each user's ratings in
time order: first 70% train, next 15% valid, last 15% test; the ``ml-100k-user``
protocol when this binllm has it, else emulated here). Writes
bench/results/hashing_balance.md/.csv.

    python bench/bench_hashing.py [--quick]
    python bench/bench_hashing.py --balance [--quick]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, os.path.dirname(__file__))
from binllm import data, hashing, metrics  # noqa: E402

from common import environment, timeit, write_table  # noqa: E402


class RowDataset(torch.utils.data.Dataset):
    """What the reference code does: one Python call per row."""

    def __init__(self, frame):
        self.u = frame["uid"].to_numpy()
        self.i = frame["iid"].to_numpy()
        self.y = frame["label"].to_numpy().astype(np.float32)

    def __len__(self):
        return len(self.u)

    def __getitem__(self, k):
        return int(self.u[k]), int(self.i[k]), float(self.y[k])


def reference_epoch(model, opt, loader, beta):
    model.train()
    for u, i, y in loader:
        hu = model.continuous("user", u)
        hi = model.continuous("item", i)
        # float +-1 codes through the same STE, mixed elementwise with probability beta
        bu, bi = hashing.sign_ste(hu), hashing.sign_ste(hi)
        mu = torch.rand(hu.shape) < beta
        mi = torch.rand(hi.shape) < beta
        logits = (torch.where(mu, bu, hu) * torch.where(mi, bi, hi)).sum(-1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y.float())
        opt.zero_grad()
        loss.backward()
        opt.step()


def reference_eval(model, frame):
    loader = torch.utils.data.DataLoader(RowDataset(frame), batch_size=2048, shuffle=False)
    scores = []
    with torch.no_grad():
        for u, i, _ in loader:
            scores.append((torch.sign(model.continuous("user", u)) * torch.sign(model.continuous("item", i))).sum(-1))
    return metrics.auc(frame["label"].to_numpy(), torch.cat(scores).numpy())


def synthetic(n_rows: int, n_users: int, n_items: int, seed: int = 0) -> data.Ratings:
    rng = np.random.default_rng(seed)
    pu, pi = rng.standard_normal((n_users, 8)), rng.standard_normal((n_items, 8))
    u = rng.integers(0, n_users, n_rows)
    i = rng.zipf(1.3, n_rows) % n_items
    logit = (pu[u] * pi[i]).sum(1)
    rating = np.where(logit + rng.standard_normal(n_rows) > 0, 5.0, 2.0)
    frame = pd.DataFrame({"user": u.astype(str), "item": i.astype(str), "rating": rating,
                          "timestamp": rng.integers(10**9, 10**9 + 10**7, n_rows)})
    titles = pd.Series([f"item {k}" for k in range(n_items)], index=[str(k) for k in range(n_items)])
    return data.Ratings(frame, titles, "synthetic")


def bench(name, prep, epochs, rows):
    cfg = hashing.HashConfig(max_epochs=epochs, patience=10**6, beta_step=0.02)
    # binllm loop: per-epoch time of training + binary evaluation
    t = time.perf_counter()
    res = hashing.train(prep, cfg, None, progress=False, log=False)
    ours_epoch = np.median([h["seconds"] for h in res.history])
    total = time.perf_counter() - t
    # reference-style loop, same model and optimiser
    model = hashing.build_model(cfg, prep.n_user_slots, prep.n_item_slots)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loader = torch.utils.data.DataLoader(RowDataset(prep.split("train")), batch_size=cfg.batch_size, shuffle=True)
    valid = prep.split("valid")
    t_ref = timeit(lambda: (reference_epoch(model, opt, loader, 0.5), reference_eval(model, valid)), repeats=3,
                   warmup=0, budget_s=120)
    n_train = int(prep.mask("train").sum())
    rows.append({"dataset": name, "train_rows": n_train, "impl": "binllm hashing.train (whole-tensor batches)",
                 "s_per_epoch": ours_epoch, "rows_per_s": n_train / ours_epoch,
                 "note": f"{epochs} epochs in {total:.1f}s; best epoch {res.best_epoch}"})
    rows.append({"dataset": name, "train_rows": n_train, "impl": "reference-style DataLoader over rows",
                 "s_per_epoch": t_ref["median"], "rows_per_s": n_train / t_ref["median"],
                 "binllm_x": t_ref["median"] / ours_epoch, "note": f"median of {t_ref['n']} epochs"})


def per_user_split(prep: data.Prepared) -> data.Prepared:
    """`prep` re-split per user: each user's rows in time order, first 70% train, 15% valid, 15% test
    (warm flags and valid_small recomputed)."""
    import copy

    r = prep.rows.copy()  # sorted by (uid, timestamp)
    k = r.groupby("uid").cumcount().to_numpy()
    n = r.groupby("uid")["uid"].transform("size").to_numpy()
    flag = np.where(k < np.round(0.70 * n), -1, np.where(k < np.round(0.85 * n), 0, 1)).astype(np.int8)
    r["flag"] = flag
    train = flag == -1
    utc = np.bincount(r["uid"].to_numpy()[train], minlength=prep.n_user_slots)
    itc = np.bincount(r["iid"].to_numpy()[train], minlength=prep.n_item_slots)
    r["user_train_count"], r["item_train_count"] = utc[r["uid"].to_numpy()], itc[r["iid"].to_numpy()]
    r["not_cold"] = (r["user_train_count"] > 0) & (r["item_train_count"] > 0)
    rng = np.random.default_rng(0)
    small = np.zeros(len(r), bool)
    valid = np.flatnonzero(flag == 0)
    small[rng.choice(valid, size=len(valid) // 2, replace=False)] = True
    r["valid_small"] = small
    out = copy.copy(prep)
    out.rows = r
    out.meta = {**prep.meta, "protocol": {**prep.meta["protocol"], "name": "ml-100k-user (emulated)"}}
    return out


BALANCE_SETTINGS = [("off", 0.0, 0.0), ("balance 0.1", 0.1, 0.0), ("balance 1", 1.0, 0.0),
                    ("decorr 0.1", 0.0, 0.1), ("decorr 1", 0.0, 1.0)]


def bench_balance(quick: bool) -> None:
    splits = {"ml-100k (global time)": data.prepare(data.read_ml100k(), "ml-100k")}
    if "ml-100k-user" in data.PROTOCOLS:
        splits["ml-100k-user"] = data.prepare(data.read_ml100k(), "ml-100k-user")
    else:
        splits["ml-100k-user (emulated)"] = per_user_split(splits["ml-100k (global time)"])
    seeds = [0, 1] if quick else [0, 1, 2]
    settings = BALANCE_SETTINGS[:2] if quick else BALANCE_SETTINGS
    # small caps keep this cheap: binary from epoch 20 (beta_step 0.05), stop after 5 binary rounds without gain
    cap = dict(max_epochs=8 if quick else 25, beta_step=0.05, patience=5)
    rows = []
    for split_name, prep in splits.items():
        te = hashing.SplitTensors.of(prep, "test")
        for name, bw, dw in settings:
            per_seed = []
            for seed in seeds:
                cfg = hashing.HashConfig(seed=seed, balance_weight=bw, decorr_weight=dw, **cap)
                t = time.perf_counter()
                res = hashing.train(prep, cfg, None, progress=False, log=False)
                m = hashing.evaluate(res.model, te)
                cs = hashing.code_stats(res.model.packed_codes("item")[1:], cfg.d)
                us = hashing.code_stats(res.model.packed_codes("user")[1:], cfg.d)
                per_seed.append({"valid_auc": res.best_valid_auc, "test_auc": m["auc"],
                                 "item_bit_entropy": cs["bit_entropy"], "item_distinct": cs["distinct_codes"],
                                 "user_bit_entropy": us["bit_entropy"], "user_distinct": us["distinct_codes"],
                                 "best_epoch": res.best_epoch, "seconds": time.perf_counter() - t})
                print(split_name, name, seed, {k: round(v, 4) for k, v in per_seed[-1].items()}, flush=True)
            va = np.array([p["valid_auc"] for p in per_seed])
            row = {"split": split_name, "setting": name, "balance_weight": bw, "decorr_weight": dw,
                   "seeds": len(seeds), "valid_auc_mean": va.mean(), "valid_auc_std": va.std(ddof=1)}
            for key in ("test_auc", "item_bit_entropy", "item_distinct", "user_bit_entropy", "user_distinct",
                        "best_epoch", "seconds"):
                row[key] = float(np.mean([p[key] for p in per_seed]))
            rows.append(row)
    # verdict: a setting wins only if its mean valid AUC beats "off" by more than 2x the larger seed std
    for split_name in splits:
        base = next(r for r in rows if r["split"] == split_name and r["setting"] == "off")
        for r in rows:
            if r["split"] != split_name:
                continue
            gain = r["valid_auc_mean"] - base["valid_auc_mean"]
            noise = 2 * max(r["valid_auc_std"], base["valid_auc_std"])
            r["gain_vs_off"] = gain
            r["wins"] = "yes" if r["setting"] != "off" and gain > noise else "no"
    name = "hashing_balance_quick" if quick else "hashing_balance"
    write_table(name, rows, ["split", "setting", "balance_weight", "decorr_weight", "seeds", "valid_auc_mean",
                             "valid_auc_std", "gain_vs_off", "wins", "test_auc", "item_bit_entropy",
                             "item_distinct", "user_bit_entropy", "user_distinct", "best_epoch", "seconds"],
                environment(),
                f"Hash model (d=32, default lr/wd, {cap}) with and without the bit-balance / decorrelation "
                f"regularisers; means over seeds {seeds}. `wins` = mean valid AUC gain over `off` larger than "
                "2x the larger seed std. Bit entropy: mean over bits of the binary entropy of the bit's share "
                "of ones (1 = every bit splits 50/50).")
    print(open(os.path.join(os.path.dirname(__file__), "results", name + ".md")).read().split("Environment")[0])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--balance", action="store_true", help="measure the balance/decorrelation regularisers")
    args = ap.parse_args()
    if args.balance:
        bench_balance(args.quick)
        return
    rows = []
    prep = data.prepare(data.read_ml100k(), "ml-100k")
    bench("ML-100K", prep, 5 if args.quick else 20, rows)
    n = 100_000 if args.quick else 1_000_000
    big = data.prepare(synthetic(n, 50_000, 20_000), data.Protocol("synthetic", label_min=4, split="quantile"))
    bench(f"synthetic {n:,} rows", big, 2 if args.quick else 5, rows)
    # quality of the default on ML-100K: time to the best epoch
    t = time.perf_counter()
    res = hashing.train(prep, hashing.HashConfig(), None, progress=False, log=False)
    secs = time.perf_counter() - t
    te = hashing.SplitTensors.of(prep, "test")
    m = hashing.evaluate(res.model, te)
    to_best = sum(h["seconds"] for h in res.history[: res.best_epoch + 1])
    rows.append({"dataset": "ML-100K", "impl": "binllm default run (early stopping)",
                 "s_per_epoch": secs / res.epochs_run,
                 "note": f"best epoch {res.best_epoch} after {to_best:.1f}s, stopped at {res.epochs_run} "
                         f"({secs:.1f}s); test AUC {m['auc']:.4f}"})
    write_table("hashing_quick" if args.quick else "hashing", rows,
                ["dataset", "train_rows", "impl", "s_per_epoch", "rows_per_s", "binllm_x", "note"], environment(),
                "Seconds per epoch (training + binary validation AUC) of the hash model, d=32, batch 2048. "
                "`binllm_x` = reference-style seconds / binllm seconds. Both loops run the same model, optimiser "
                "and STE; the reference-style loop builds batches with a DataLoader over per-row __getitem__ "
                "and evaluates with float +-1 codes.")
    print(open(os.path.join(os.path.dirname(__file__), "results",
                            ("hashing_quick" if args.quick else "hashing") + ".md")).read().split("Environment")[0])


if __name__ == "__main__":
    main()
