"""The optional bit-balance / decorrelation regularisers of the hash model
(HashConfig.balance_weight / decorr_weight): valid AUC, test AUC, item bit
entropy and distinct item codes over a few seeds, on ML-100K's global time
split (``ml-100k``) and on a per-user time split (each user's ratings in time
order: first 70% train, next 15% valid, last 15% test; the ``ml-100k-user``
protocol when this binllm has it, else emulated here). Writes
bench/results/hashing_balance.md/.csv. The hash-model speed benchmark is
``binllm bench hashing``.

    python bench/bench_hashing_balance.py [--quick]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from binllm import data
from binllm.cf import hashing  # noqa: E402

from common import environment, write_table  # noqa: E402


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
    print(open(os.path.join(os.path.dirname(__file__), "results", name + ".md")).read().split("Machine facts")[0])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    bench_balance(ap.parse_args().quick)


if __name__ == "__main__":
    main()
