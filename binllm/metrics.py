"""Ranking metrics with uncertainty: AUC, UAUC (per-user AUC averaged over
users), the warm/cold breakdown every results table carries, 95% bootstrap
intervals for all of them, paired-bootstrap intervals for differences between
methods scored on the same rows, and the item-popularity baseline scores.

Both AUCs are rank statistics (Mann-Whitney U) with tied scores sharing their
average rank, computed with sorts and segment sums — no per-user Python loop.

Bootstrap conventions (one place, used by every function below):
- AUC intervals resample ROWS with replacement; a resample is a row of
  multinomial counts over the rows, and with negatives sorted once by score
  each resample's AUC is a count-weighted Mann-Whitney sum (no per-resample
  sort). Resamples that hold only one class are skipped.
- UAUC intervals resample USERS (cluster bootstrap): rows of one user are not
  independent, so the unit of resampling is the user. Per-user AUCs are
  computed once over users with both labels (as `uauc` does), then users are
  drawn with replacement and averaged.
- Intervals are percentile intervals at `level`; the same `seed` gives the
  same resamples, so intervals are reproducible, and `paired_bootstrap` uses
  the same row (user) draws as `bootstrap_auc` (`bootstrap_uauc`) with that
  seed, so marginal and paired intervals agree about which resamples were used.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

# Resamples are processed in chunks of at most this many (resample x row)
# cells, so memory stays ~100 MB whatever n_boot and n are.
_CHUNK_CELLS = 2_000_000


def _as1d(name: str, x: Any, n: int | None = None) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {a.shape}")
    if n is not None and len(a) != n:
        raise ValueError(f"{name} must have {n} entries like labels; got {len(a)}")
    return a


def _check_scores(name: str, scores: Any, n: int) -> np.ndarray:
    s = _as1d(name, scores, n).astype(np.float64)
    if not np.isfinite(s).all():
        raise ValueError(f"{name} must be finite; found {int((~np.isfinite(s)).sum())} NaN/Inf")
    return s


def _check(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y = _as1d("labels", labels)
    s = _check_scores("scores", scores, len(y))
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return y.astype(np.int64), s


def _check_users(labels: Any, scores: Any, users: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y, s = _check(labels, scores)
    return y, s, _as1d("users", users, len(y))


def _check_boot(n_boot: int, seed: int, level: float) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be an int >= 1; got {n_boot!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int; got {type(seed).__name__}")
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 < level < 1.0:
        raise ValueError(f"level must be a float in (0, 1); got {level!r}")


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
    y, s = _check(labels, scores)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="stable")
    ss = s[order]
    ranks = _tied_ranks(ss[1:] == ss[:-1], len(ss))
    r_pos = ranks[y[order] == 1].sum()
    return float((r_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _per_user_auc(u: np.ndarray, y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-user AUCs of users with both labels, in ascending user order.

    Returns (auc per used user float64 (k,), those users' ids (k,), users skipped)."""
    if len(y) == 0:
        return np.zeros(0), u[:0], 0
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
    per = (r_pos[ok] - n_pos[ok] * (n_pos[ok] + 1) / 2) / (n_pos[ok] * n_neg[ok])
    return per, us[ustart[ok]], int((~ok).sum())


def uauc(users: Any, labels: Any, scores: Any) -> tuple[float, int, int]:
    """Mean of per-user AUC over users with both labels (hence >= 2 rows).

    Returns (uauc, users used, users skipped); uauc is NaN when no user has both labels."""
    y, s, u = _check_users(labels, scores, users)
    per, _, skipped = _per_user_auc(u, y, s)
    if len(per) == 0:
        return float("nan"), 0, skipped
    return float(per.mean()), len(per), skipped


# ---------------------------------------------------------------- bootstrap core

def _chunks(n_boot: int, n: int) -> Iterator[int]:
    """Resample chunk sizes; depend only on (n_boot, n), so results depend only on the seed."""
    step = max(1, min(n_boot, _CHUNK_CELLS // max(n, 1)))
    for b0 in range(0, n_boot, step):
        yield min(step, n_boot - b0)


def _draw_counts(rng: np.random.Generator, b: int, n: int) -> np.ndarray:
    """Multinomial counts int64 (b, n): how often each of n units is drawn in
    each of b resamples of size n (uniform draws with replacement)."""
    idx = rng.integers(0, n, size=(b, n))
    idx += (np.arange(b, dtype=np.int64) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=b * n).reshape(b, n)


class _Ranked:
    """One method's rows split once into negatives sorted by score and
    positives; for each positive, how many negatives score below it (`lo`) and
    at most equal to it (`hi`). `auc(counts)` then gives each resample's AUC as
    a weighted Mann-Whitney sum in exact integer arithmetic, no per-resample sort."""

    def __init__(self, y: np.ndarray, s: np.ndarray):
        neg = np.flatnonzero(y == 0)
        self.neg = neg[np.argsort(s[neg], kind="stable")]
        self.pos = np.flatnonzero(y == 1)
        sn = s[self.neg]
        self.lo = np.searchsorted(sn, s[self.pos], "left")
        self.hi = np.searchsorted(sn, s[self.pos], "right")
        self.ties = bool((self.lo != self.hi).any())

    def auc(self, counts: np.ndarray) -> np.ndarray:
        """AUC of each resample given counts (b, n) in ORIGINAL row order; NaN for one-class resamples."""
        cn = np.zeros((len(counts), len(self.neg) + 1), np.int64)
        np.cumsum(counts[:, self.neg], axis=1, out=cn[:, 1:])  # cn[:, k] = negatives among the k lowest
        cp = counts[:, self.pos]
        # a positive beats the negatives below it and ties half of those equal: 2U = sum c (below + below_or_equal)
        credit = cn[:, self.lo] + cn[:, self.hi] if self.ties else 2 * cn[:, self.lo]
        u2 = np.einsum("ij,ij->i", cp, credit)
        n_pos, n_neg = cp.sum(1), cn[:, -1]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where((n_pos > 0) & (n_neg > 0), u2 / (2.0 * n_pos * n_neg), np.nan)


def _interval(vals: np.ndarray, level: float) -> tuple[float, float]:
    v = vals[~np.isnan(vals)]
    if len(v) == 0:
        return float("nan"), float("nan")
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(v, [a, 1.0 - a])
    return float(lo), float(hi)


def _row_boot(ranked: list[_Ranked], n: int, n_boot: int, seed: int) -> list[np.ndarray]:
    """Bootstrap AUCs (n_boot,) of each ranked method, all on the same row resamples."""
    rng = np.random.default_rng(seed)
    outs: list[list[np.ndarray]] = [[] for _ in ranked]
    for b in _chunks(n_boot, n):
        c = _draw_counts(rng, b, n)
        for o, r in zip(outs, ranked):
            o.append(r.auc(c))
    return [np.concatenate(o) for o in outs]


def _user_boot(per: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Bootstrap means (n_boot,) of per-unit values, units drawn with replacement."""
    k = len(per)
    if k == 0:
        return np.full(n_boot, np.nan)
    rng = np.random.default_rng(seed)
    return np.concatenate([_draw_counts(rng, b, k) @ per / k for b in _chunks(n_boot, k)])


# ---------------------------------------------------------------- public bootstrap API

def bootstrap_auc(labels: Any, scores: Any, n_boot: int = 1000, seed: int = 0,
                  level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUC, resampling rows.

    Args: labels 0/1 (n,); scores finite floats (n,); n_boot resamples (>= 1);
    seed of the resampling; level of the two-sided interval in (0, 1).
    Returns (lo, hi); (NaN, NaN) when the AUC itself is NaN (one class). Resamples
    that draw only one class are skipped. Raises ValueError on mismatched
    lengths, non-0/1 labels or NaN/Inf scores."""
    y, s = _check(labels, scores)
    _check_boot(n_boot, seed, level)
    if y.sum() == 0 or y.sum() == len(y):
        return float("nan"), float("nan")
    return _interval(_row_boot([_Ranked(y, s)], len(y), n_boot, seed)[0], level)


def bootstrap_uauc(users: Any, labels: Any, scores: Any, n_boot: int = 1000, seed: int = 0,
                   level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the UAUC, resampling USERS (cluster bootstrap).

    Per-user AUCs are computed once over users with both labels (others are
    excluded, as in `uauc`); each resample draws that many users with
    replacement and averages their AUCs. Returns (lo, hi); (NaN, NaN) when no
    user has both labels. Arguments and errors as `bootstrap_auc`, plus users (n,)."""
    y, s, u = _check_users(labels, scores, users)
    _check_boot(n_boot, seed, level)
    per, _, _ = _per_user_auc(u, y, s)
    return _interval(_user_boot(per, n_boot, seed), level)


def paired_bootstrap(users: Any, labels: Any, scores_a: Any, scores_b: Any, n_boot: int = 1000,
                     seed: int = 0, level: float = 0.95) -> dict[str, float | int]:
    """Differences A - B of AUC and UAUC of two methods scored on the same rows.

    AUC: rows are resampled and each resample uses the SAME rows for both
    methods; UAUC: users are resampled, the per-user difference of AUCs averaged.
    Returns a dict with, for m in (auc, uauc): `m_a`, `m_b`, `m_diff` (point
    estimates), `m_diff_lo`, `m_diff_hi` (percentile interval), `m_share_le0`
    (share of resampled differences <= 0, a one-sided bootstrap p-value-like
    number for "A is better"), `m_boot_used` (resamples with both classes); and
    `n_rows`, `n_users_uauc`, `n_boot`, `level`. Values are NaN where the metric
    is undefined (one class; no user with both labels)."""
    y, sa, u = _check_users(labels, scores_a, users)
    sb = _check_scores("scores_b", scores_b, len(y))
    _check_boot(n_boot, seed, level)
    out: dict[str, float | int] = {"n_rows": len(y), "n_boot": int(n_boot), "level": float(level)}

    auc_a, auc_b = auc(y, sa), auc(y, sb)
    if math.isnan(auc_a):
        d = np.full(n_boot, np.nan)
    else:
        ba, bb = _row_boot([_Ranked(y, sa), _Ranked(y, sb)], len(y), n_boot, seed)
        d = ba - bb
    _diff_stats(out, "auc", auc_a, auc_b, d, level)

    pa, users_a, _ = _per_user_auc(u, y, sa)
    pb, users_b, _ = _per_user_auc(u, y, sb)
    assert np.array_equal(users_a, users_b)  # which users count depends on labels only
    out["n_users_uauc"] = len(pa)
    ua = float(pa.mean()) if len(pa) else float("nan")
    ub = float(pb.mean()) if len(pb) else float("nan")
    _diff_stats(out, "uauc", ua, ub, _user_boot(pa - pb, n_boot, seed), level)
    return out


def _diff_stats(out: dict[str, float | int], m: str, a: float, b: float, d: np.ndarray, level: float) -> None:
    ok = ~np.isnan(d)
    out[f"{m}_a"], out[f"{m}_b"], out[f"{m}_diff"] = a, b, a - b
    out[f"{m}_diff_lo"], out[f"{m}_diff_hi"] = _interval(d, level)
    out[f"{m}_share_le0"] = float((d[ok] <= 0).mean()) if ok.any() else float("nan")
    out[f"{m}_boot_used"] = int(ok.sum())


# ---------------------------------------------------------------- evaluation and tables

def evaluate(users: Any, labels: Any, scores: Any, warm: Any = None, n_boot: int = 0, seed: int = 0,
             level: float = 0.95) -> dict[str, float | int]:
    """AUC and UAUC with bootstrap intervals overall and, given `warm` (bool per
    row), on warm and cold rows (keys prefixed `warm_` / `cold_`).

    Keys per part: auc, auc_lo, auc_hi, uauc, uauc_lo, uauc_hi, n_rows, n_pos,
    n_users_uauc; plus the older names rows (overall) / warm_rows / cold_rows,
    uauc_users (= n_users_uauc) and uauc_skipped; and n_boot, level. A part
    without both labels gets NaN metrics and its counts (never an error).
    `n_boot=0` (the default: per-epoch validation needs no intervals) skips the
    bootstrap (intervals NaN); result tables pass n_boot=1000."""
    y, s, u = _check_users(labels, scores, users)
    if not (isinstance(n_boot, (int, np.integer)) and not isinstance(n_boot, bool) and n_boot == 0):
        _check_boot(n_boot, seed, level)
    out: dict[str, float | int] = {"rows": len(y), "n_boot": int(n_boot), "level": float(level)}
    parts = [("", np.ones(len(y), bool))]
    if warm is not None:
        w = _as1d("warm", warm, len(y))
        if w.dtype != bool and not np.isin(w, (0, 1)).all():
            raise ValueError("warm must be bool (or 0/1) per row")
        w = w.astype(bool)
        parts += [("warm_", w), ("cold_", ~w)]
    nan2 = (float("nan"), float("nan"))
    for p, m in parts:
        ym, sm, um = y[m], s[m], u[m]
        out[p + "auc"] = auc(ym, sm)
        out[p + "auc_lo"], out[p + "auc_hi"] = (
            bootstrap_auc(ym, sm, n_boot, seed, level) if n_boot and not math.isnan(out[p + "auc"]) else nan2)
        per, _, skipped = _per_user_auc(um, ym, sm)
        out[p + "uauc"] = float(per.mean()) if len(per) else float("nan")
        out[p + "uauc_lo"], out[p + "uauc_hi"] = (
            _interval(_user_boot(per, n_boot, seed), level) if n_boot and len(per) else nan2)
        out[p + "n_rows"], out[p + "n_pos"] = int(m.sum()), int(ym.sum())
        out[p + "n_users_uauc"] = out[p + "uauc_users"] = len(per)
        out[p + "uauc_skipped"] = skipped
        if p:
            out[p + "rows"] = int(m.sum())
    return out


def item_positive_rate_scores(train_items: Any, train_labels: Any, n_items: int,
                              pseudo: float = 5.0) -> np.ndarray:
    """Item-popularity baseline: each item's train positive rate, smoothed
    toward the global train positive rate with `pseudo` pseudo-rows:
    score[i] = (pos_i + pseudo * mean) / (rows_i + pseudo); unseen items get the mean.

    Args: train_items int ids in [0, n_items) (n,); train_labels 0/1 (n,), n >= 1;
    n_items >= 1; pseudo >= 0 (0: raw rates). Returns float64 (n_items,); index it
    with test item ids to score test rows like any method."""
    it = _as1d("train_items", train_items)
    y = _as1d("train_labels", train_labels, len(it))
    if isinstance(n_items, bool) or not isinstance(n_items, (int, np.integer)) or n_items < 1:
        raise ValueError(f"n_items must be an int >= 1; got {n_items!r}")
    if not (isinstance(pseudo, (int, float)) and not isinstance(pseudo, bool) and math.isfinite(pseudo)
            and pseudo >= 0):
        raise ValueError(f"pseudo must be a finite number >= 0; got {pseudo!r}")
    if len(it) == 0:
        raise ValueError("train_items must hold at least one row (the global rate is undefined)")
    if not np.issubdtype(it.dtype, np.integer):
        raise TypeError(f"train_items must be integer ids; got {it.dtype}")
    if it.min() < 0 or it.max() >= n_items:
        raise ValueError(f"train_items must lie in [0, {n_items}); got range [{it.min()}, {it.max()}]")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("train_labels must be 0 or 1")
    y = y.astype(np.float64)
    mean = float(y.mean())
    rows = np.bincount(it, minlength=n_items).astype(np.float64)
    pos = np.bincount(it, weights=y, minlength=n_items)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (pos + pseudo * mean) / (rows + pseudo)
    r[rows + pseudo == 0] = mean  # pseudo = 0 and an unseen item
    return r


def _isnan(v: object) -> bool:
    return v is None or (isinstance(v, (float, np.floating)) and math.isnan(v))


def _cell(r: dict, key: str, digits: int) -> str:
    v = r.get(key)
    if _isnan(v):
        prefix = key[:key.index("auc")].removesuffix("u")  # "warm_uauc" -> "warm_"
        n = r.get(prefix + "n_rows")
        return "—" if n is None else f"— ({n} rows)"
    s = f"{v:.{digits}f}"
    lo, hi = r.get(key + "_lo"), r.get(key + "_hi")
    if not (_isnan(lo) or _isnan(hi)):
        s += f" [{lo:.{digits - 1}f}, {hi:.{digits - 1}f}]"
    return s


_TABLE_COLS = {"auc": "AUC", "uauc": "UAUC", "warm_auc": "warm AUC", "cold_auc": "cold AUC"}


def table(results: dict[str, dict], digits: int = 4, cols: tuple[str, ...] = tuple(_TABLE_COLS)) -> str:
    """Markdown table of evaluate() results by method name: cells
    "0.7425 [0.731, 0.754]" (point, then the bootstrap interval when present),
    columns `cols` (default AUC, UAUC, warm AUC, cold AUC) and rows. A "—" cell
    is a metric undefined on that subset (one class), with its row count."""
    level = next((r["level"] for r in results.values() if "level" in r and r.get("n_boot")), None)
    ci = f" [{level:.0%} CI]" if level else ""
    head = [_TABLE_COLS.get(c, c.replace("_", " ").upper()) + ci for c in cols]
    lines = ["| method | " + " | ".join(head) + " | rows |", "|---|" + "---|" * (len(cols) + 1)]
    for name, r in results.items():
        cells = [_cell(r, c, digits) for c in cols]
        rows = r.get("n_rows", r.get("rows"))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'—' if rows is None else rows} |")
    return "\n".join(lines)


def _signed(v: float | None, digits: int) -> str:
    return "—" if _isnan(v) else f"{v:+.{digits}f}"


def diff_table(diffs: dict[str, dict], digits: int = 3) -> str:
    """Markdown table of paired_bootstrap() results keyed by comparison name
    (e.g. "BinLLM - text-only"): cells "+0.061 [+0.021, +0.100]" for the AUC and
    UAUC differences, the share of resamples <= 0, rows and users."""
    level = next((d["level"] for d in diffs.values() if "level" in d), 0.95)
    head = (f"| comparison (A - B, paired {level:.0%} bootstrap CI) | Δ AUC | share Δ≤0 | Δ UAUC | share Δ≤0 "
            "| rows | users |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    for name, d in diffs.items():
        cells = []
        for m in ("auc", "uauc"):
            c = _signed(d.get(f"{m}_diff"), digits)
            if not _isnan(d.get(f"{m}_diff")) and not _isnan(d.get(f"{m}_diff_lo")):
                c += f" [{_signed(d[f'{m}_diff_lo'], digits)}, {_signed(d[f'{m}_diff_hi'], digits)}]"
            share = d.get(f"{m}_share_le0")
            cells += [c, "—" if _isnan(share) else f"{share:.3f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {d.get('n_rows', '—')} | {d.get('n_users_uauc', '—')} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- recommendation lists

def list_metrics(items: Any, targets_off: Any, targets: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-user HR@k and NDCG@k (float64 (q,) each) of ranked item lists.

    Args:
        items: int (q, >= k) ranked item ids, best first (< 0: an empty place).
        targets_off, targets: CSR of each user's relevant item ids (offsets (q + 1,); every user
            has at least one).
        k: list length scored (>= 1).
    HR@k is 1 when a relevant item is among the first k; NDCG@k = DCG@k / the ideal DCG of
    min(#relevant, k) hits at the top (binary gains, log2 discounts).
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1; got {k!r}")
    it = np.asarray(items)
    if it.ndim != 2 or it.shape[1] < k:
        raise ValueError(f"items must be a 2-D array with at least k={k} columns; got shape {it.shape}")
    q = len(it)
    off, tg = np.asarray(targets_off, np.int64), np.asarray(targets, np.int64)
    cnt = np.diff(off)
    if off.shape != (q + 1,) or off[0] != 0 or (cnt < 1).any() or off[-1] != len(tg):
        raise ValueError(f"targets_off must be CSR offsets ({q + 1},) from 0 with >= 1 target per user and "
                         f"targets_off[-1] == len(targets); got shape {off.shape}")
    top = it[:, :k].astype(np.int64)
    big = int(max(top.max(initial=0), tg.max(initial=0))) + 1
    tk = np.sort(np.repeat(np.arange(q, dtype=np.int64), cnt) * big + tg)
    ck = np.arange(q, dtype=np.int64)[:, None] * big + top
    pos = np.minimum(np.searchsorted(tk, ck), max(len(tk) - 1, 0))
    hit = (tk[pos] == ck) & (top >= 0) if len(tk) else np.zeros_like(top, bool)
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    idcg = np.cumsum(disc)[np.minimum(cnt, k) - 1]
    return np.asarray(hit.any(axis=1), np.float64), np.asarray((hit * disc).sum(axis=1) / idcg, np.float64)


def bootstrap_mean(values: Any, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi) of per-user values (e.g. HR@k), a percentile interval over users drawn with
    replacement (the resampling of UAUC intervals). NaN for no users."""
    v = _check_scores("values", values, len(_as1d("values", values)))
    _check_boot(n_boot, seed, level)
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    lo, hi = _interval(_user_boot(v, n_boot, seed), level)
    return float(v.mean()), lo, hi


def paired_bootstrap_mean(values_a: Any, values_b: Any, n_boot: int = 1000, seed: int = 0,
                          level: float = 0.95) -> dict[str, float | int]:
    """Difference A - B of the means of per-user values of two methods on the SAME users, with a
    paired percentile interval (users drawn with replacement, each draw used for both).

    Returns ``a``, ``b``, ``diff``, ``diff_lo``, ``diff_hi``, ``share_le0`` (share of resampled
    differences <= 0), ``users``, ``n_boot``, ``level``."""
    a = _check_scores("values_a", values_a, len(_as1d("values_a", values_a)))
    b = _check_scores("values_b", values_b, len(a))
    _check_boot(n_boot, seed, level)
    out: dict[str, float | int] = {"users": len(a), "n_boot": int(n_boot), "level": float(level)}
    if len(a) == 0:
        out.update(a=float("nan"), b=float("nan"), diff=float("nan"), diff_lo=float("nan"),
                   diff_hi=float("nan"), share_le0=float("nan"))
        return out
    d = _user_boot(a - b, n_boot, seed)
    lo, hi = _interval(d, level)
    out.update(a=float(a.mean()), b=float(b.mean()), diff=float(a.mean() - b.mean()), diff_lo=lo, diff_hi=hi,
               share_le0=float((d <= 0).mean()))
    return out
