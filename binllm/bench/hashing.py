"""The hashing suite: hash-model training speed, binllm's whole-tensor loop
against a reference-style loop (a torch DataLoader over rows with per-row
``__getitem__``, float +-1 codes), on ML-100K and on a generated 1M-row dataset
(100k with ``--quick``). Same model, optimiser, STE and batch size; then the
default run's time to its best epoch and its test AUC.

No measured machine limit bounds this loop (it is many small torch ops, bound
by their per-op overhead), so the rows carry no ``frac_limit``. The
bit-balance study lives in ``bench/bench_hashing_balance.py``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from binllm import data, metrics
from binllm.bench import machine, report
from binllm.bench.report import Row, timeit
from binllm.cf import hashing

COLUMNS = ["dataset", "train_rows", "impl", "s_per_epoch", "rows_per_s", "binllm_x", "note"]


class RowDataset(torch.utils.data.Dataset):
    """What the reference code does: one Python call per row."""

    def __init__(self, frame: Any):
        self.u = frame["uid"].to_numpy()
        self.i = frame["iid"].to_numpy()
        self.y = frame["label"].to_numpy().astype(np.float32)

    def __len__(self) -> int:
        return len(self.u)

    def __getitem__(self, k: int) -> tuple[int, int, float]:
        return int(self.u[k]), int(self.i[k]), float(self.y[k])


def reference_epoch(model: Any, opt: torch.optim.Optimizer, loader: Any, beta: float) -> None:
    """One training epoch the reference way: float +-1 codes through the same STE, mixed
    elementwise with the continuous ones with probability `beta`."""
    model.train()
    for u, i, y in loader:
        hu = model.continuous("user", u)
        hi = model.continuous("item", i)
        bu, bi = hashing.sign_ste(hu), hashing.sign_ste(hi)
        mu = torch.rand(hu.shape) < beta
        mi = torch.rand(hi.shape) < beta
        logits = (torch.where(mu, bu, hu) * torch.where(mi, bi, hi)).sum(-1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y.float())
        opt.zero_grad()
        loss.backward()
        opt.step()


def reference_eval(model: Any, frame: Any) -> float:
    """Binary-code AUC on `frame`, batched by a DataLoader over rows."""
    loader = torch.utils.data.DataLoader(RowDataset(frame), batch_size=2048, shuffle=False)
    scores = []
    with torch.no_grad():
        for u, i, _ in loader:
            scores.append((torch.sign(model.continuous("user", u)) * torch.sign(model.continuous("item", i))).sum(-1))
    return float(metrics.auc(frame["label"].to_numpy(), torch.cat(scores).numpy()))


def synthetic(n_rows: int, n_users: int, n_items: int, seed: int = 0) -> data.Ratings:
    """Ratings that follow 8 latent factors, items Zipf-popular, labels from the factor score + noise."""
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


def bench(name: str, prep: data.Prepared, epochs: int, rows: list[Row]) -> None:
    """Seconds per epoch of binllm's loop and of the reference-style loop on `prep`."""
    cfg = hashing.HashConfig(max_epochs=epochs, patience=10**6, beta_step=0.02)
    # binllm loop: per-epoch time of training + binary evaluation
    t = time.perf_counter()
    res = hashing.train(prep, cfg, None, progress=False, log=False)
    ours_epoch = float(np.median([h["seconds"] for h in res.history]))
    total = time.perf_counter() - t
    # reference-style loop, same model and optimiser
    model = hashing.build_model(cfg, prep.n_user_slots, prep.n_item_slots)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loader = torch.utils.data.DataLoader(RowDataset(prep.split("train")), batch_size=cfg.batch_size, shuffle=True)
    valid = prep.split("valid")
    def reference() -> None:
        reference_epoch(model, opt, loader, 0.5)
        reference_eval(model, valid)

    t_ref = timeit(reference, repeats=3, warmup=0, budget_s=120)
    n_train = int(prep.mask("train").sum())
    rows.append({"dataset": name, "train_rows": n_train, "impl": "binllm hashing.train (whole-tensor batches)",
                 "s_per_epoch": ours_epoch, "rows_per_s": n_train / ours_epoch,
                 "note": f"{epochs} epochs in {total:.1f}s; best epoch {res.best_epoch}"})
    rows.append({"dataset": name, "train_rows": n_train, "impl": "reference-style DataLoader over rows",
                 "s_per_epoch": t_ref["median"], "rows_per_s": n_train / t_ref["median"],
                 "binllm_x": t_ref["median"] / ours_epoch, "note": f"median of {int(t_ref['n'])} epochs"})


def run(out_dir: str | Path, quick: bool = False, progress: bool = True) -> Path:
    """Runs the hashing suite and writes ``out_dir/hashing[_quick].md|csv|png``; returns the .md path."""
    say = report.Say("hashing", progress)
    rows: list[Row] = []
    _, facts = machine.start(say, {1, machine.hardware_threads()}, ("numpy", "torch", "pandas", "pyarrow"))
    say("ML-100K: binllm loop and reference-style loop")
    prep = data.prepare(data.read_ml100k(), "ml-100k")
    bench("ML-100K", prep, 5 if quick else 20, rows)
    n = 100_000 if quick else 1_000_000
    say(f"synthetic {n:,} rows: binllm loop and reference-style loop")
    big = data.prepare(synthetic(n, 50_000, 20_000), data.Protocol("synthetic", label_min=4, split="quantile"))
    bench(f"synthetic {n:,} rows", big, 2 if quick else 5, rows)
    say("ML-100K: the default run to its best epoch")
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
    name = "hashing_quick" if quick else "hashing"
    notes = (f"`binllm bench hashing{' --quick' if quick else ''}`. Seconds per epoch (training + binary validation "
             "AUC) of the hash model, d=32, batch 2048. `binllm_x` = reference-style seconds / binllm seconds. "
             "Both loops run the same model, optimiser and STE; the reference-style loop builds batches with a "
             "DataLoader over per-row __getitem__ and evaluates with float +-1 codes. No measured machine limit "
             "bounds these loops (many small torch ops: per-op overhead), so no row has a `frac_limit`.")
    path = report.write_table(out_dir, name, rows, COLUMNS, facts, notes)
    report.bar_plot(Path(out_dir) / f"{name}.png", rows, "impl", "s_per_epoch", "seconds per epoch (lower is better)",
                    group="dataset")
    return path
