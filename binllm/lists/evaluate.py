"""List quality of a run: HR@k and NDCG@k on each user's test positives for item popularity, the
float anchors (MF; `implicit` ALS and BPR when installed, :mod:`binllm.cf.anchors`), both code books
and re-ranking of the retrieval candidates on a user sample, with bootstrap intervals over users
and paired intervals of the differences that matter (codes - popularity, codes - the best float
model, re-rank - its candidates); and their markdown table.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from binllm import metrics
from binllm.cf import retrieval
from binllm.lists import folder
from binllm.lists.candidates import check_nk
from binllm.lists.recommender import Recommender
from binllm.lists.rerank import RERANK_METHODS
from binllm.progress import log

#: Row names of the list table, one source for the table, the pairs and the tests.
POPULARITY_ROW = "item popularity (train positives)"
FLOAT_ROWS = {"mf": "MF (float, 256-d, BCE)", "als": "implicit ALS (float, 64 factors)",
              "bpr": "implicit BPR (float, 64 factors)"}
RERANK_ROWS = {"text": "+ text-only re-rank", "binllm": "+ BinLLM re-rank"}


def _codes_row(cb: Any, source: str, learned_only: bool = False) -> str:
    obj = cb.config.get("objective", "bce")
    learned = int(cb.config.get("learned_bits", cb.d))
    bits = f"{learned} bits" if learned == cb.d or learned_only else f"{learned} + {cb.d - learned} prior bits"
    return f"{'retrieval' if source == 'retrieval' else 'prompt (BinMF)'} codes ({bits}, {obj})"


def evaluate_lists(run_dir: str | os.PathLike, users: int | None = None, ks: Sequence[int] = (5, 10, 20),
                   n: int = 20, rerank_methods: Sequence[str] = RERANK_METHODS, rerank_users: int = 300,
                   seed: int = 0, include_valid: bool = True, n_boot: int = 1000, progress: bool = True,
                   device: str = "auto", dtype: str = "auto", anchors: bool = True) -> dict:
    """HR@k and NDCG@k of recommendation lists on each user's test positives, with paired differences.

    Users: those with at least one test positive not rated in the known splits (train, and valid with
    `include_valid`); `users` samples that many of them (None: all). Retrieval rows rank the whole
    catalogue minus the known items: item popularity, the float anchors (MF; `implicit` ALS and BPR with
    `anchors` when the package is installed), the prompt code book and the retrieval code book (when
    the run has one). Re-ranking rows re-order the `n` candidates of the retrieval codes ('codes' of
    :meth:`Recommender.retrieve`) on a sample of `rerank_users` of the evaluated users, next to those
    candidates' own order on the same users. Intervals: 95% percentile bootstrap over users; paired
    differences draw the same users for both rows.

    Returns:
        {"settings": ..., "rows": {name: {"users": int, "HR@k": [mean, lo, hi], "NDCG@k": [...]}},
         "differences": {"A - B": {"users": int, "HR@k": {paired stats}, "NDCG@k": {...}}}}.
    """
    ks = tuple(int(x) for x in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be a non-empty list of integers >= 1; got {ks}")
    check_nk(n, max(ks))
    if users is not None and (isinstance(users, bool) or not isinstance(users, (int, np.integer)) or users < 1):
        raise ValueError(f"users must be None (all users) or a sample size >= 1; got {users!r}")
    if isinstance(rerank_users, bool) or not isinstance(rerank_users, (int, np.integer)) or rerank_users < 0:
        raise ValueError(f"rerank_users must be an integer >= 0; got {rerank_users!r}")
    for m in rerank_methods:
        if m not in RERANK_METHODS:
            raise ValueError(f"rerank_methods must hold values of {RERANK_METHODS}; got {m!r}")
    rec = Recommender(run_dir, include_valid=include_valid, device=device, dtype=dtype, progress=progress)
    known = ("train", "valid") if include_valid else ("train",)
    task = retrieval.ListTask.of(rec.prep, known, "test")
    rng = np.random.default_rng(seed)
    q_all = len(task.users)
    pos = np.arange(q_all) if users is None or users >= q_all else np.sort(rng.choice(q_all, users, replace=False))
    task = task.subset(pos)
    rr_pos = (np.arange(len(pos)) if rerank_users >= len(pos)
              else np.sort(rng.choice(len(pos), rerank_users, replace=False)))
    kmax = max(ks)
    per_user: dict[str, dict[str, np.ndarray]] = {}  # row -> metric -> per-user values
    rows: dict[str, dict] = {}

    def add(name: str, items: np.ndarray, t: retrieval.ListTask) -> None:
        per: dict[str, np.ndarray] = {}
        out: dict[str, Any] = {"users": int(len(t.users))}
        for k in ks:
            # list_metrics takes catalogue indices: item slot - 1 (empty places stay negative)
            hr, nd = metrics.list_metrics(np.where(items > 0, items - 1, -1), t.target_offsets, t.targets, k)
            per[f"HR@{k}"], per[f"NDCG@{k}"] = hr, nd
            out[f"HR@{k}"] = list(metrics.bootstrap_mean(hr, n_boot, seed))
            out[f"NDCG@{k}"] = list(metrics.bootstrap_mean(nd, n_boot, seed))
        per_user[name], rows[name] = per, out

    slots = task.users
    add(POPULARITY_ROW, rec.retrieve(slots, kmax, "popularity").items, task)
    floats = []
    if (rec.run_dir / folder.MF_CHECKPOINT).is_file():
        floats.append("mf")
    if anchors:
        from binllm.cf import anchors as _anchors

        if _anchors.available():
            floats += ["als", "bpr"]
        elif progress:
            log("lists: the `implicit` package is not installed, so no ALS / BPR anchor rows "
                "(pip install 'binllm[bench]')")
    for f in floats:
        add(FLOAT_ROWS[f], rec.retrieve(slots, kmax, f).items, task)
    prompt_row = _codes_row(rec.codebook, "prompt")
    add(prompt_row, rec.retrieve(slots, kmax, "binmf").items, task)
    main_row = _codes_row(rec.retrieval_codebook, rec.codes_source)
    if rec.codes_source == "retrieval":
        rcb = rec.retrieval_codebook
        learned_row = None
        if int(rcb.config.get("learned_bits", rcb.d)) != rcb.d:  # the prior bits' share, shown apart
            learned_row = _codes_row(rcb, "retrieval", learned_only=True)
            add(learned_row, rec.retrieve(slots, kmax, "codes_no_prior").items, task)
        add(main_row, rec.retrieve(slots, kmax, "codes").items, task)
    pairs = [(main_row, POPULARITY_ROW)]
    if floats:
        best_float = max((FLOAT_ROWS[f] for f in floats), key=lambda r: rows[r]["HR@10" if 10 in ks else
                                                                             f"HR@{kmax}"][0])
        pairs.append((main_row, best_float))
    if rec.codes_source == "retrieval":
        pairs.append((main_row, prompt_row))
        if learned_row is not None:
            pairs.append((main_row, learned_row))
    if rerank_methods and len(rr_pos):
        sub = task.subset(rr_pos)
        cands = rec.retrieve(sub.users, n, "codes")
        cand_row = f"{main_row} on the re-rank users"
        add(cand_row, cands.items, sub)
        for m in rerank_methods:
            name = f"{main_row} {RERANK_ROWS[m]}"
            add(name, rec.rerank(cands, m, kmax).items, sub)
            pairs.append((name, cand_row))
        if len(rerank_methods) == 2:
            pairs.append((f"{main_row} {RERANK_ROWS['binllm']}", f"{main_row} {RERANK_ROWS['text']}"))
    diffs = {}
    for a, b in pairs:
        d: dict[str, Any] = {"users": rows[a]["users"]}
        for key in per_user[a]:
            d[key] = metrics.paired_bootstrap_mean(per_user[a][key], per_user[b][key], n_boot, seed)
        diffs[f"{a} - {b}"] = d
    return {"settings": {"run_dir": str(run_dir), "ks": list(ks), "n": n, "users": int(len(slots)),
                         "users_with_test_positives": int(q_all), "rerank_users": int(len(rr_pos)),
                         "rerank_methods": list(rerank_methods), "include_valid": include_valid, "seed": seed,
                         "n_boot": n_boot, "targets_dropped_as_known": task.dropped,
                         "codes": rec.codes_source, "codes_config": rec.retrieval_codebook.config},
            "rows": rows, "differences": diffs}


def lists_markdown(res: dict, digits: int = 4) -> str:
    """Markdown tables of :func:`evaluate_lists` results: mean [95% interval] per metric, then the
    paired differences."""
    s = res["settings"]
    cols = [f"{m}@{k}" for k in s["ks"] for m in ("HR", "NDCG")]
    known = "train and valid" if s["include_valid"] else "train"
    head = (f"Users with test positives: {s['users']} evaluated ({s['users_with_test_positives']} in all), "
            f"full-catalogue lists without the items each user rated in {known}; "
            f"re-ranking on {s['rerank_users']} of them over the {s['n']} candidates of the {s['codes']} codes. "
            f"Code scores tie: ties go to the more popular item. 95% percentile-bootstrap intervals over users "
            f"({s['n_boot']} resamples).")
    lines = [head, "", "| method | users | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for name, r in res["rows"].items():
        cells = [f"{r[c][0]:.{digits}f} [{r[c][1]:.{digits}f}, {r[c][2]:.{digits}f}]" for c in cols]
        lines.append(f"| {name} | {r['users']} | " + " | ".join(cells) + " |")
    diffs = res.get("differences") or {}
    if diffs:
        dk = [c for c in cols if c.endswith("@10")] or cols[:2]
        lines += ["", "Paired differences on the same users (95% paired-bootstrap intervals; share: resamples "
                      "with a difference <= 0):", "",
                  "| comparison (A - B) | users | " + " | ".join(f"Δ {c} | share Δ≤0" for c in dk) + " |",
                  "|---|---|" + "---|---|" * len(dk)]
        for name, d in diffs.items():
            cells = [f"{d[c]['diff']:+.3f} [{d[c]['diff_lo']:+.3f}, {d[c]['diff_hi']:+.3f}] | {d[c]['share_le0']:.3f}"
                     for c in dk]
            lines.append(f"| {name} | {d['users']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
