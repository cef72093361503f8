"""Stage 1 of the lists: each user's known items (excluded from the lists, and the prompt history
of re-ranking) and top-n retrieval from the whole catalogue by codes, float vectors or
popularity (:mod:`binllm.cf.retrieval` does the search).
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from binllm.cf import retrieval
from binllm.cf.retrieval import NONE_ITEM
from binllm.lists import folder

if TYPE_CHECKING:
    from binllm.cf.codebook import CodeBook
    from binllm.data import Prepared

#: Retrieval methods of :meth:`Candidates.retrieve`: 'codes' (the retrieval code book, or the prompt
#: code book when the run has none), 'codes_no_prior' (its learned bits alone, without the popularity-prior
#: bits), 'binmf' (the prompt code book), 'mf' (float MF), 'popularity', and the `implicit` anchors 'als'
#: and 'bpr'.
RETRIEVAL_METHODS = ("codes", "codes_no_prior", "binmf", "mf", "popularity", "als", "bpr")


def check_nk(n: int, k: int) -> None:
    """ValueError naming `k` or `n` unless 1 <= k <= n (list length, candidates per user)."""
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be an integer >= 1; got {k!r}")
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < k:
        raise ValueError(f"n must be an integer >= k (candidates per user, here k={k}); got {n!r}")


@dataclass
class RecLists:
    """Recommendation lists of several users.

    Attributes:
        users: int64 (q,) user slots.
        items: int64 (q, k) item slots, best first; -1 where the list ran out of items.
        retrieval: (q, k) retrieval scores (int32 for codes, float32 for MF / popularity).
        llm: float32 (q, k) LLM scores, or None without re-ranking.
        backfilled: bool (q,): users given the popularity list because they have no known
            interaction (code retrieval only; None for the other methods).
    """

    users: np.ndarray
    items: np.ndarray
    retrieval: np.ndarray
    llm: np.ndarray | None = None
    backfilled: np.ndarray | None = None


class Candidates:
    """Known items and retrieval for the users of one prepared dataset.

    Args:
        prep: the prepared dataset.
        codebook: the prompt code book (BinMF codes; 'binmf' retrieval).
        retrieval_codebook: the code book of 'codes' retrieval (the prompt one when the run has no other),
            and `codes_source`: which it is ('retrieval' or 'prompt').
        include_valid: the valid split's interactions are known too (excluded, and history), besides train's.
        run_dir: the run folder, for the MF embeddings of 'mf' retrieval.
    """

    def __init__(self, prep: Prepared, codebook: CodeBook, retrieval_codebook: CodeBook, codes_source: str,
                 include_valid: bool = False, run_dir: str | os.PathLike | None = None):
        self.prep, self.codebook, self.retrieval_codebook = prep, codebook, retrieval_codebook
        self.codes_source, self.include_valid = codes_source, include_valid
        self.run_dir = None if run_dir is None else Path(run_dir)
        #: train positives of each catalogue item: the popularity list and the tie order of code scores
        self.popularity = retrieval.popularity(self.prep, ("train",))
        self._tie = retrieval.popularity_order(self.popularity)
        self._slot = {str(u): s for s, u in enumerate(self.prep.user_ids) if s > 0}
        self.n_items = self.prep.n_item_slots - 1  # catalogue = item slots 1.. (0 is padding)
        rows = self.prep.rows
        known = self.prep.mask("train") | (self.prep.mask("valid") if include_valid else False)
        uid = rows["uid"].to_numpy()[known].astype(np.int64)
        iid = rows["iid"].to_numpy()[known].astype(np.int64)
        # excluded items per user slot, CSR over catalogue indices (slot - 1), sorted and unique
        keys = np.unique(uid * self.prep.n_item_slots + iid)
        ku = keys // self.prep.n_item_slots
        self._excl_off = np.r_[0, np.cumsum(np.bincount(ku, minlength=self.prep.n_user_slots))].astype(np.int64)
        self._excl_items = (keys % self.prep.n_item_slots - 1).astype(np.int64)
        # liked items per user in time order (rows are sorted by (uid, timestamp)): the prompt history
        liked = known & (rows["label"].to_numpy() == 1)
        lu = rows["uid"].to_numpy()[liked].astype(np.int64)
        self._hist_items = rows["iid"].to_numpy()[liked].astype(np.int64)
        self._hist_off = np.r_[0, np.cumsum(np.bincount(lu, minlength=self.prep.n_user_slots))].astype(np.int64)
        self._dense: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def user_slots(self, users: Iterable[Any] | None) -> np.ndarray:
        """Slots of raw user ids (None: every user), int64 (q,); ValueError naming unknown ids."""
        if users is None:
            return np.arange(1, self.prep.n_user_slots, dtype=np.int64)
        if isinstance(users, (str, bytes)):
            raise TypeError(f"users must be a list of raw user ids (or None for all users); got the string {users!r}")
        ids = [str(u) for u in users]
        bad = [u for u in ids if u not in self._slot]
        if bad:
            raise ValueError(f"users: {len(bad)} unknown user id(s), e.g. {bad[:5]}; give raw user ids of the run's "
                             f"data ({self.prep.n_user_slots - 1} users, e.g. {list(self.prep.user_ids[1:4])})")
        return np.array([self._slot[u] for u in ids], np.int64)

    def exclusions(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """CSR (offsets (q+1,), catalogue indices) of the excluded items of user slots."""
        a, b = self._excl_off[slots], self._excl_off[slots + 1]
        counts = b - a
        off = np.r_[0, np.cumsum(counts)].astype(np.int64)
        pos = np.arange(off[-1]) - np.repeat(off[:-1] - a, counts)
        return off, self._excl_items[pos]

    def history(self, slot: int, length: int) -> np.ndarray:
        """The user's latest `length` liked items of the known splits, oldest first."""
        h = self._hist_items[self._hist_off[slot]:self._hist_off[slot + 1]]
        return h[max(len(h) - length, 0):] if length > 0 else h[:0]

    def retrieve(self, slots: np.ndarray, n: int, method: str = "codes") -> RecLists:
        """Top-n items per user slot by one of :data:`RETRIEVAL_METHODS`.

        Code scores tie often (a d-bit +-1 product takes d + 1 values): equal scores are ordered by
        popularity, then the lower item slot. Users without a known interaction get the popularity
        list (their code was never trained); `RecLists.backfilled` marks them."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n must be an integer >= 1; got {n!r}")
        if method not in RETRIEVAL_METHODS:
            raise ValueError(f"method must be one of {RETRIEVAL_METHODS}; got {method!r}")
        off, ex = self.exclusions(slots)
        backfill = None
        if method in ("codes", "codes_no_prior", "binmf"):
            cb = self.codebook if method == "binmf" else self.retrieval_codebook
            uc, ic, d = cb.user_codes, cb.item_codes, cb.d
            if method == "codes_no_prior":
                uc, ic, d = folder.learned_bits(cb)
            s, i = retrieval.retrieve_codes(uc[slots], ic[1:], d, n, off, ex, tie_order=self._tie)
            backfill = np.diff(off) == 0
            if backfill.any():
                pb = np.flatnonzero(backfill)
                ps, pi = retrieval.retrieve_ranked(self.popularity, len(pb), n)
                s[pb], i[pb] = ps.astype(s.dtype), pi
        elif method == "popularity":
            s, i = retrieval.retrieve_ranked(self.popularity, len(slots), n, off, ex)
        else:
            u, it = self._dense_factors(method)
            s, i = retrieval.retrieve_dense(u[slots], it, n, off, ex)
        items = np.where(i >= 0, i + 1, NONE_ITEM)
        return RecLists(slots, items, s, None, backfill)

    def _dense_factors(self, method: str) -> tuple[np.ndarray, np.ndarray]:
        """User (slots, f) and catalogue item (slots - 1, f) float vectors of 'mf', 'als' or 'bpr', made once."""
        if method not in self._dense:
            if method == "mf":
                if self.run_dir is None:
                    raise ValueError("method 'mf' needs the run folder (run_dir) of the MF embeddings")
                u, it = folder.load_mf(self.run_dir)
                self._dense[method] = (u, it[1:])
            else:
                from binllm.cf import anchors

                self._dense[method] = anchors.implicit_factors(self.prep, method)
        return self._dense[method]
