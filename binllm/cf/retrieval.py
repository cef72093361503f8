"""Candidate retrieval: the top-n items of each user from the whole catalogue,
without the items the user already rated, by packed codes, float vectors or
one global ranking, and the list tasks (users, exclusions, targets) that list
metrics are computed on.

* :func:`retrieve_codes` ranks by the +-1 inner product of packed codes
  (:func:`binllm.topk`). The kernel is asked for n + (most exclusions of any
  user in the chunk) items and the excluded ones are dropped with sorted-key
  look-ups (:func:`filter_excluded`), all vectorised. Ties follow `tie_order`
  (e.g. items by popularity, most popular first) or, without it, the lower
  catalogue index: the kernel breaks ties by the lower index, so the item
  codes are handed to it in `tie_order` and the indices mapped back.
* :func:`retrieve_dense` does the same for float vectors (torch matmul + topk)
  and :func:`retrieve_ranked` for one global ranking (item popularity).
* :class:`ListTask` holds, for one "known splits -> target split" pair of a
  prepared dataset, the users with at least one target positive, each user's
  excluded items (the known interactions) and their targets, as CSR arrays.

Catalogue indices here are item slot - 1 (slot 0 is padding and never listed);
CSR arrays are ``offsets`` (q + 1,) and ``values`` (offsets[-1],).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from binllm.kernels import codes as _codes

if TYPE_CHECKING:
    from binllm.data import Prepared

NONE_ITEM = -1  # fills list places when fewer items than asked remain after exclusion


def _csr_check(name_off: str, off: np.ndarray, name_items: str, items: np.ndarray, q: int, m: int) -> None:
    if off.shape != (q + 1,) or (len(off) and (off[0] != 0 or (np.diff(off) < 0).any())):
        raise ValueError(f"{name_off} must be non-decreasing int offsets (queries + 1 = {q + 1},) from 0; "
                         f"got shape {off.shape}")
    if off[-1] != len(items):
        raise ValueError(f"{name_items} must have {name_off}[-1] = {off[-1]} entries; got {len(items)}")
    if len(items) and (items.min() < 0 or items.max() >= m):
        raise ValueError(f"{name_items} must lie in 0..{m - 1}; found {items.min()}..{items.max()}")


def filter_excluded(scores: np.ndarray, idx: np.ndarray, excl_offsets: np.ndarray, excl_items: np.ndarray,
                    n: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Drops excluded items from ranked lists and keeps the first `n` of each row.

    Args:
        scores: (q, k') scores, best first; idx: int64 (q, k') item indices (-1 = none).
        excl_offsets: int (q + 1,) CSR offsets; excl_items: the excluded item indices of row r
            are ``excl_items[excl_offsets[r]:excl_offsets[r + 1]]`` (any order, duplicates allowed).
        n: list length kept; n_items: catalogue size (for the keys).
    Returns:
        (scores (q, n), idx int64 (q, n)); places past the remaining items hold idx -1 and the
        lowest score of the dtype.
    """
    q = len(idx)
    counts = np.diff(excl_offsets)
    ek = np.sort(np.repeat(np.arange(q, dtype=np.int64), counts) * n_items + excl_items.astype(np.int64))
    ck = np.arange(q, dtype=np.int64)[:, None] * n_items + idx
    keep = idx >= 0
    if len(ek):
        pos = np.minimum(np.searchsorted(ek, ck), len(ek) - 1)
        keep &= ek[pos] != ck
    rank = np.cumsum(keep, axis=1) - 1
    take = keep & (rank < n)
    low = np.iinfo(scores.dtype).min if np.issubdtype(scores.dtype, np.integer) else -np.inf
    out_s = np.full((q, n), low, scores.dtype)
    out_i = np.full((q, n), NONE_ITEM, np.int64)
    r, c = np.nonzero(take)
    out_s[r, rank[r, c]] = scores[r, c]
    out_i[r, rank[r, c]] = idx[r, c]
    return out_s, out_i


def _exclusions_or_empty(q: int, m: int, excl_offsets: np.ndarray | None,
                         excl_items: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    if excl_offsets is None:
        return np.zeros(q + 1, np.int64), np.zeros(0, np.int64)
    off = np.asarray(excl_offsets, np.int64)
    items = np.asarray(excl_items if excl_items is not None else np.zeros(0, np.int64))
    _csr_check("excl_offsets", off, "excl_items", items, q, max(m, 1))
    return off, items


def check_tie_order(tie_order: np.ndarray | None, m: int) -> np.ndarray | None:
    """`tie_order` as int64, checked to be a permutation of 0..m-1 (None passes through)."""
    if tie_order is None:
        return None
    t = np.asarray(tie_order)
    if t.shape != (m,) or not np.issubdtype(t.dtype, np.integer) or not np.array_equal(np.sort(t), np.arange(m)):
        raise ValueError(f"tie_order must be a permutation of the {m} catalogue indices (int, shape ({m},)); "
                         f"got {t.dtype} {t.shape}")
    return t.astype(np.int64)


def search_excluding(q: int, m: int, n: int, excl_offsets: np.ndarray, excl_items: np.ndarray, chunk: int,
                     search: Callable[[int, int, int], tuple[np.ndarray, np.ndarray]],
                     score_dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """The over-fetch-and-filter loop every retrieval here runs: for each chunk of queries a..b,
    ``search(a, b, kk)`` gives its top kk = n + (most exclusions of a query in the chunk) scores and
    indices, and the excluded items are dropped (:func:`filter_excluded`), so n remain wherever the
    catalogue has them. excl_offsets, excl_items: checked CSR (:func:`_exclusions_or_empty`).
    Returns (scores (q, n) of `score_dtype`, idx int64 (q, n))."""
    scores: np.ndarray = np.empty((q, n), score_dtype)
    idx = np.empty((q, n), np.int64)
    counts = np.diff(excl_offsets)
    for a in range(0, q, chunk):
        b = min(q, a + chunk)
        kk = min(m, n + int(counts[a:b].max()))
        if kk == 0:  # an empty catalogue
            scores[a:b] = np.iinfo(score_dtype).min if np.issubdtype(score_dtype, np.integer) else -np.inf
            idx[a:b] = NONE_ITEM
            continue
        s, i = search(a, b, kk)
        off = excl_offsets[a:b + 1] - excl_offsets[a]
        if off[-1] == 0 and kk >= n:  # nothing to exclude in this chunk
            scores[a:b], idx[a:b] = s[:, :n], i[:, :n]
        else:
            scores[a:b], idx[a:b] = filter_excluded(s, i, off, excl_items[excl_offsets[a]:excl_offsets[b]], n, m)
    return scores, idx


def retrieve_codes(user_codes: np.ndarray, item_codes: np.ndarray, d: int, n: int,
                   excl_offsets: np.ndarray | None = None, excl_items: np.ndarray | None = None,
                   chunk: int = 8192, tie_order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-n items per query code by +-1 inner product, without each query's excluded items.

    Args:
        user_codes: uint8 (q, ceil(d/8)) query codes; item_codes: uint8 (m, ceil(d/8)).
        d: code bits; n: list length (>= 1).
        excl_offsets, excl_items: CSR of excluded item indices per query (see :func:`filter_excluded`).
        chunk: queries per kernel call (bounds the over-fetched temporaries).
        tie_order: int (m,) permutation of the item indices; among equal scores, items earlier in it
            come first (e.g. ``np.argsort(-popularity, kind="stable")``). None: the lower index first.
    Returns:
        (scores int32 (q, n), item indices int64 (q, n)), best first; idx -1 where fewer than n
        items remain.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1; got {n!r}")
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk must be an integer >= 1; got {chunk!r}")
    q, m = len(user_codes), len(item_codes)
    excl_offsets, excl_items = _exclusions_or_empty(q, m, excl_offsets, excl_items)
    order = check_tie_order(tie_order, m)
    if order is not None:
        # The kernel breaks ties by the lower index: hand it the items in tie order, map the indices back.
        item_codes = item_codes[order]
        rank_of = np.empty(m, np.int64)
        rank_of[order] = np.arange(m)
        excl_items = rank_of[excl_items.astype(np.int64)]
    scores, idx = search_excluding(q, m, n, excl_offsets, excl_items, chunk,
                                   lambda a, b, kk: _codes.topk(user_codes[a:b], item_codes, d, kk), np.int32)
    if order is not None:
        idx = np.where(idx >= 0, order[np.maximum(idx, 0)], NONE_ITEM)
    return scores, idx


def retrieve_dense(user_vecs: np.ndarray, item_vecs: np.ndarray, n: int, excl_offsets: np.ndarray | None = None,
                   excl_items: np.ndarray | None = None, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """As :func:`retrieve_codes` for float vectors: float32 dot products (torch matmul + topk);
    user_vecs (q, f), item_vecs (m, f). Returns (scores float32 (q, n), idx int64 (q, n))."""
    import torch

    q, m = len(user_vecs), len(item_vecs)
    excl_offsets, excl_items = _exclusions_or_empty(q, m, excl_offsets, excl_items)
    it = torch.from_numpy(np.ascontiguousarray(item_vecs, np.float32))

    def search(a: int, b: int, kk: int) -> tuple[np.ndarray, np.ndarray]:
        top = torch.topk(torch.from_numpy(np.ascontiguousarray(user_vecs[a:b], np.float32)) @ it.T, kk, dim=1,
                         sorted=True)
        return top.values.numpy(), top.indices.numpy().astype(np.int64)

    return search_excluding(q, m, n, excl_offsets, excl_items, chunk, search, np.float32)


def retrieve_ranked(item_scores: np.ndarray, q: int, n: int, excl_offsets: np.ndarray | None = None,
                    excl_items: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One global ranking (e.g. item popularity, float (m,)) for q users, without each user's
    excluded items; ties to the lower index. Returns (scores (q, n), idx int64 (q, n))."""
    s = np.asarray(item_scores)
    m = len(s)
    excl_offsets, excl_items = _exclusions_or_empty(q, m, excl_offsets, excl_items)
    order = np.argsort(-s, kind="stable")

    def search(a: int, b: int, kk: int) -> tuple[np.ndarray, np.ndarray]:
        return (np.broadcast_to(s[order[:kk]], (b - a, kk)),
                np.broadcast_to(order[:kk].astype(np.int64), (b - a, kk)))

    return search_excluding(q, m, n, excl_offsets, excl_items, max(q, 1), search, s.dtype.type)


def popularity(prep: Prepared, splits: Sequence[str] = ("train",)) -> np.ndarray:
    """Positives (label 1) of each catalogue item in `splits`: int64 (item slots - 1,).

    The list baseline "item popularity" and the tie order of code retrieval. (The pair-scoring
    baseline of the results table is another score, the smoothed positive rate:
    :func:`binllm.metrics.item_positive_rate_scores`.)"""
    mask = np.zeros(len(prep.rows), bool)
    for s in splits:
        mask |= prep.mask(s)
    liked = mask & (prep.rows["label"].to_numpy() == 1)
    iid = prep.rows["iid"].to_numpy()[liked].astype(np.int64)
    return np.bincount(iid, minlength=prep.n_item_slots)[1:].astype(np.int64)


def popularity_order(pop: np.ndarray) -> np.ndarray:
    """Catalogue indices by popularity, most popular first, ties to the lower index: the tie order
    of code retrieval."""
    return np.argsort(-np.asarray(pop), kind="stable").astype(np.int64)


def _csr(rows: np.ndarray, values: np.ndarray, q: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR of (row, value) pairs (rows in 0..q-1), values sorted within a row, duplicates dropped."""
    keys = np.unique(rows.astype(np.int64) * (int(values.max(initial=0)) + 1) + values.astype(np.int64))
    width = int(values.max(initial=0)) + 1
    r, v = keys // width, keys % width
    off = np.r_[0, np.cumsum(np.bincount(r, minlength=q))].astype(np.int64)
    return off, v.astype(np.int64)


@dataclass
class ListTask:
    """Users to list for, what each already rated, and what each should find.

    Attributes:
        users: int64 (q,) user slots, ascending: those with at least one target positive that is
            not among their known interactions.
        excl_offsets, excl_items: CSR (q + 1,), catalogue indices of each user's known interactions
            (any label), which a list must not contain.
        target_offsets, targets: CSR (q + 1,), catalogue indices of each user's target positives.
        dropped: target positives dropped because the user already rated the item in a known split.
    """

    users: np.ndarray
    excl_offsets: np.ndarray
    excl_items: np.ndarray
    target_offsets: np.ndarray
    targets: np.ndarray
    dropped: int = 0

    @classmethod
    def of(cls, prep: Prepared, known: Sequence[str] = ("train",), target: str = "test") -> ListTask:
        """The task "rank the catalogue for each user, knowing the `known` splits, and find the
        positives of `target`" on a prepared dataset."""
        if target in known:
            raise ValueError(f"target split {target!r} must not be among the known splits {tuple(known)}")
        rows = prep.rows
        uid, iid = rows["uid"].to_numpy().astype(np.int64), rows["iid"].to_numpy().astype(np.int64)
        nu = prep.n_user_slots
        km = np.zeros(len(rows), bool)
        for s in known:
            km |= prep.mask(s)
        e_off, e_items = _csr(uid[km], iid[km] - 1, nu)
        tm = prep.mask(target) & (rows["label"].to_numpy() == 1)
        t_off, t_items = _csr(uid[tm], iid[tm] - 1, nu)
        # drop targets the user already rated in a known split: they can never be listed
        t_user = np.repeat(np.arange(nu, dtype=np.int64), np.diff(t_off))
        e_user = np.repeat(np.arange(nu, dtype=np.int64), np.diff(e_off))
        width = prep.n_item_slots
        known_t = np.isin(t_user * width + t_items, e_user * width + e_items)
        t_off2, t_items2 = _csr(t_user[~known_t], t_items[~known_t], nu)
        users = np.flatnonzero(np.diff(t_off2) > 0).astype(np.int64)
        ex_off, ex = take_rows(e_off, e_items, users)
        tg_off, tg = take_rows(t_off2, t_items2, users)
        return cls(users, ex_off, ex, tg_off, tg, int(known_t.sum()))

    def subset(self, positions: np.ndarray) -> ListTask:
        """The task restricted to ``users[positions]`` (in that order)."""
        p = np.asarray(positions, np.int64)
        e_off, e = take_rows(self.excl_offsets, self.excl_items, p)
        t_off, t = take_rows(self.target_offsets, self.targets, p)
        return ListTask(self.users[p], e_off, e, t_off, t, self.dropped)


def take_rows(offsets: np.ndarray, values: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The CSR rows `rows` (int (q,)) of (offsets, values), in that order: (offsets (q + 1,), values)."""
    a, b = offsets[rows], offsets[np.asarray(rows) + 1]
    counts = b - a
    off = np.r_[0, np.cumsum(counts)].astype(np.int64)
    pos = np.arange(off[-1]) - np.repeat(off[:-1] - a, counts)
    return off, values[pos]


#: Weights of the popularity prior tried on valid lists when a code book's ``prior_weight`` is None.
PRIOR_WEIGHTS = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)


def prior_levels(pop: np.ndarray, weight: float) -> tuple[np.ndarray, int]:
    """Integer prior levels of catalogue items and the number of prior bits: the prior
    ``weight * log(1 + pop)`` in steps of 2 score units (one prior bit moves a +-1 product by 2),
    ``q = round(weight * log(1 + pop) / 2)``, bits = max q. Returns (q int64 (m,), bits)."""
    if not (isinstance(weight, (int, float)) and np.isfinite(weight) and weight >= 0):
        raise ValueError(f"weight must be a finite number >= 0; got {weight!r}")
    q = np.rint(weight * np.log1p(np.maximum(np.asarray(pop, np.float64), 0)) / 2).astype(np.int64)
    return q, int(q.max(initial=0))


def append_prior_bits(user_codes: np.ndarray, item_codes: np.ndarray, d: int,
                      levels: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Codes of d + bits bits whose +-1 inner product is the old one plus an item prior:
    users get `bits` ones; item slot s (catalogue index s - 1) gets ``levels[s - 1]`` ones then zeros
    (a thermometer code), so the product gains ``2 * level - bits``: an order-preserving per-item
    bonus that the unchanged top-k kernel ranks with. Slot 0 (padding) gets level 0.

    Args: user_codes (users, ceil(d/8)), item_codes (slots, ceil(d/8)) uint8; levels int (slots - 1,)
    in 0..bits. Returns (user_codes, item_codes, d + bits)."""
    if bits == 0:
        return user_codes, item_codes, d
    lv = np.asarray(levels, np.int64)
    if lv.shape != (len(item_codes) - 1,) or lv.min(initial=0) < 0 or lv.max(initial=0) > bits:
        raise ValueError(f"levels must be ({len(item_codes) - 1},) integers in 0..{bits}; got {lv.shape}")
    u = _codes.unpack_bits(user_codes, d)
    it = _codes.unpack_bits(item_codes, d)
    ub = np.ones((len(u), bits), np.uint8)
    ib = (np.arange(bits)[None, :] < np.r_[0, lv][:, None]).astype(np.uint8)
    pack = lambda b: np.packbits(b, axis=1)  # noqa: E731  (MSB-first, tail bits zero: binllm's layout)
    return pack(np.hstack([u, ub])), pack(np.hstack([it, ib])), d + bits
