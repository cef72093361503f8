"""Ranking metrics: AUC, UAUC (per-user AUC averaged over users), and the
warm/cold breakdown every results table carries.

Both AUCs are rank statistics (Mann-Whitney U) with tied scores sharing their
average rank, computed with sorts and segment sums — no per-user Python loop.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def _as1d(name: str, x: Any, n: int | None = None) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {a.shape}")
    if n is not None and len(a) != n:
        raise ValueError(f"{name} must have {n} entries like labels; got {len(a)}")
    return a


def _check(labels: Any, scores: Any, users: Any = None):
    y = _as1d("labels", labels)
    s = _as1d("scores", scores, len(y)).astype(np.float64)
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if not np.isfinite(s).all():
        raise ValueError(f"scores must be finite; found {int((~np.isfinite(s)).sum())} NaN/Inf")
    u = None if users is None else _as1d("users", users, len(y))
    return y.astype(np.int64), s, u


def _tied_ranks(keys_sorted_equal: np.ndarray, n: int) -> np.ndarray:
    """1-based average ranks for a sorted sequence; `keys_sorted_equal[k]` says
    whether element k+1 ties with element k."""
    new = np.r_[True, ~keys_sorted_equal]
    start = np.flatnonzero(new)
    size = np.diff(np.r_[start, n])
    avg = start + (size + 1) / 2.0
    return np.repeat(avg, size)


def auc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    y, s, _ = _check(labels, scores)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="stable")
    ss = s[order]
    ranks = _tied_ranks(ss[1:] == ss[:-1], len(ss))
    r_pos = ranks[y[order] == 1].sum()
    return float((r_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def uauc(users: Any, labels: Any, scores: Any) -> tuple[float, int, int]:
    """Mean of per-user AUC over users with both labels (hence >= 2 rows).

    Returns (uauc, users used, users skipped)."""
    y, s, u = _check(labels, scores, users)
    if len(y) == 0:
        return float("nan"), 0, 0
    order = np.lexsort((s, u))
    us, ss, ys = u[order], s[order], y[order]
    n = len(us)
    ustart = np.flatnonzero(np.r_[True, us[1:] != us[:-1]])
    usize = np.diff(np.r_[ustart, n])
    same = (us[1:] == us[:-1]) & (ss[1:] == ss[:-1])
    ranks_global = _tied_ranks(same, n)
    ranks = ranks_global - np.repeat(ustart, usize)  # rank within the user's block
    n_pos = np.add.reduceat(ys, ustart)
    r_pos = np.add.reduceat(ranks * ys, ustart)
    n_neg = usize - n_pos
    ok = (n_pos > 0) & (n_neg > 0)
    if not ok.any():
        return float("nan"), 0, int(len(ustart))
    per = (r_pos[ok] - n_pos[ok] * (n_pos[ok] + 1) / 2) / (n_pos[ok] * n_neg[ok])
    return float(per.mean()), int(ok.sum()), int((~ok).sum())


def evaluate(users: Any, labels: Any, scores: Any, warm: Any = None) -> dict:
    """AUC and UAUC overall and, given `warm` (bool per row), on warm and cold rows."""
    y, s, u = _check(labels, scores, users)
    out: dict[str, Any] = {"rows": int(len(y))}
    parts = [("", np.ones(len(y), bool))]
    if warm is not None:
        w = _as1d("warm", warm, len(y)).astype(bool)
        parts += [("warm_", w), ("cold_", ~w)]
    for prefix, m in parts:
        out[prefix + "auc"] = auc(y[m], s[m])
        out[prefix + "uauc"], out[prefix + "uauc_users"], out[prefix + "uauc_skipped"] = uauc(u[m], y[m], s[m])
        if prefix:
            out[prefix + "rows"] = int(m.sum())
    return out


def table(results: dict[str, dict], digits: int = 4) -> str:
    """Markdown table of evaluate() results by method name."""
    cols = ["auc", "uauc", "warm_auc", "warm_uauc", "cold_auc", "cold_uauc"]
    lines = ["| method | " + " | ".join(c.upper().replace("_", " ") for c in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for name, r in results.items():
        cells = []
        for c in cols:
            v = r.get(c)
            cells.append("—" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
