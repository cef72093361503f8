"""Recommendation lists from a finished ``binllm run`` folder: candidate
retrieval by packed codes, then optional LLM re-ranking, and their evaluation.

* Stage 1 (retrieval): the top-N items of each user by the +-1 inner product
  of the packed code book (:func:`binllm.topk`), without the items the user
  rated in train (and, optionally, valid). The kernel is asked for
  N + (most exclusions of any user in the chunk) items and the excluded ones
  are filtered out with sorted-key look-ups, all vectorised; ties stay in the
  kernel's order (lower item slot first). Users run in chunks so the
  temporary over-fetched lists stay small next to the output.
* Stage 2 (re-ranking, optional): the N candidates of each user are scored by
  a tuned LoRA adapter of the run (text-only or BinLLM) with the Yes-logit,
  through :class:`binllm.prefix_scoring.PrefixScorer` (the prompt up to the
  target item runs once per user). The final top-k is ordered by LLM score,
  then retrieval score, then retrieval rank.
* Output: JSON lines or TSV with raw user and item ids, rank, title, retrieval
  and LLM score, written atomically.
* :func:`evaluate_lists`: HR@k and NDCG@k on each user's test positives, with
  percentile-bootstrap intervals over users, for item popularity, BinMF and MF
  retrieval, and BinMF + re-ranking (on a small user sample: re-ranking on a
  CPU scores a few prompts a second).

Run folder layout (see :mod:`binllm.pipeline`): ``data/`` (prepared dataset),
``hash/codebook.safetensors``, ``hash/mf/checkpoint.pt``,
``llm/text/adapter`` and ``llm/binllm_<style>/adapter`` (with ``binllm.json``).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import _io
from . import codes as _codes

RERANK_METHODS = ("text", "binllm")
FORMATS = ("jsonl", "tsv")
NONE_ITEM = -1  # fills list places when fewer items than asked remain after exclusion


# ====================================================================== stage 1: retrieval


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


def retrieve_codes(user_codes: np.ndarray, item_codes: np.ndarray, d: int, n: int,
                   excl_offsets: np.ndarray | None = None, excl_items: np.ndarray | None = None,
                   chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Top-n items per query code by +-1 inner product, without each query's excluded items.

    Args:
        user_codes: uint8 (q, ceil(d/8)) query codes; item_codes: uint8 (m, ceil(d/8)).
        d: code bits; n: list length (>= 1).
        excl_offsets, excl_items: CSR of excluded item indices per query (see :func:`filter_excluded`).
        chunk: queries per kernel call (bounds the over-fetched temporaries).
    Returns:
        (scores int32 (q, n), item indices int64 (q, n)), best first, ties in the kernel's
        order (lower index first); idx -1 where fewer than n items remain.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1; got {chunk}")
    q, m = len(user_codes), len(item_codes)
    if excl_offsets is None:
        excl_offsets, excl_items = np.zeros(q + 1, np.int64), np.zeros(0, np.int64)
    excl_offsets = np.asarray(excl_offsets, np.int64)
    excl_items = np.asarray(excl_items)
    _csr_check("excl_offsets", excl_offsets, "excl_items", excl_items, q, max(m, 1))
    scores = np.empty((q, n), np.int32)
    idx = np.empty((q, n), np.int64)
    counts = np.diff(excl_offsets)
    for a in range(0, q, chunk):
        b = min(q, a + chunk)
        kk = min(m, n + (int(counts[a:b].max()) if b > a else 0))
        if kk == 0:
            scores[a:b], idx[a:b] = np.iinfo(np.int32).min, NONE_ITEM
            continue
        s, i = _codes.topk(user_codes[a:b], item_codes, d, kk)
        off = excl_offsets[a:b + 1] - excl_offsets[a]
        if off[-1] == 0 and kk >= n:  # nothing to exclude in this chunk
            scores[a:b], idx[a:b] = s[:, :n], i[:, :n]
        else:
            scores[a:b], idx[a:b] = filter_excluded(s, i, off, excl_items[excl_offsets[a]:excl_offsets[b]], n, m)
    return scores, idx


def _retrieve_dense(user_vecs: np.ndarray, item_vecs: np.ndarray, n: int, excl_offsets: np.ndarray,
                    excl_items: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """As :func:`retrieve_codes` for float embeddings (float32 dot products, torch matmul + topk)."""
    import torch

    q, m = len(user_vecs), len(item_vecs)
    it = torch.from_numpy(np.ascontiguousarray(item_vecs, np.float32))
    scores = np.empty((q, n), np.float32)
    idx = np.empty((q, n), np.int64)
    counts = np.diff(excl_offsets)
    for a in range(0, q, chunk):
        b = min(q, a + chunk)
        kk = min(m, n + int(counts[a:b].max()))
        s = torch.from_numpy(np.ascontiguousarray(user_vecs[a:b], np.float32)) @ it.T
        top = torch.topk(s, kk, dim=1, sorted=True)
        off = excl_offsets[a:b + 1] - excl_offsets[a]
        scores[a:b], idx[a:b] = filter_excluded(top.values.numpy(), top.indices.numpy().astype(np.int64), off,
                                                excl_items[excl_offsets[a]:excl_offsets[b]], n, m)
    return scores, idx


def _retrieve_ranked(order: np.ndarray, item_scores: np.ndarray, q: int, n: int, excl_offsets: np.ndarray,
                     excl_items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One global item ranking (popularity) filtered per user."""
    counts = np.diff(excl_offsets)
    kk = min(len(order), n + (int(counts.max()) if q else 0))
    idx = np.broadcast_to(order[:kk].astype(np.int64), (q, kk))
    return filter_excluded(np.broadcast_to(item_scores[order[:kk]], (q, kk)), idx, excl_offsets, excl_items, n,
                           len(order))


# ====================================================================== the run folder


def _load_mf(run_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """MF user and item embeddings (float32 (slots, d) each) of the run's best MF state.

    Read with :func:`binllm.hashing.load_best` from ``hash/mf``."""
    from . import hashing

    mf_dir = Path(run_dir) / "hash" / "mf"
    if not (mf_dir / "checkpoint.pt").is_file():
        raise ValueError(f"run_dir {run_dir} has no MF checkpoint ({mf_dir / 'checkpoint.pt'}); "
                         "train it with `binllm pretrain --mf` or `binllm run`")
    model = hashing.load_best(mf_dir)
    return (model.user_emb.weight.detach().float().numpy().copy(),
            model.item_emb.weight.detach().float().numpy().copy())


def run_data_dir(run_dir: Path) -> Path:
    """The prepared dataset of a run: run_config.json's `data` (``binllm run --data``) or RUN/data."""
    cfg = run_dir / "run_config.json"
    if cfg.is_file():
        d = json.loads(cfg.read_text()).get("data")
        if d:
            return Path(d)
    return run_dir / "data"


def _adapter_dir(run_dir: Path, method: str) -> Path:
    if method == "text":
        return run_dir / "llm" / "text" / "adapter"
    style = None
    cfg = run_dir / "run_config.json"
    if cfg.is_file():
        style = json.loads(cfg.read_text()).get("code_style")
    names = [f"binllm_{style}"] if style else []
    names += [x for x in ("binllm_dotted", "binllm_bits") if x not in names]
    for name in names:
        if (run_dir / "llm" / name / "adapter").is_dir():
            return run_dir / "llm" / name / "adapter"
    return run_dir / "llm" / names[0] / "adapter"


@dataclass
class RecLists:
    """Recommendation lists of several users.

    Attributes:
        users: int64 (q,) user slots.
        items: int64 (q, k) item slots, best first; -1 where the list ran out of items.
        retrieval: (q, k) retrieval scores (int32 for codes, float32 for MF / popularity).
        llm: float32 (q, k) LLM scores, or None without re-ranking.
    """

    users: np.ndarray
    items: np.ndarray
    retrieval: np.ndarray
    llm: np.ndarray | None = None


class _Reranker:
    """A tuned adapter with its prompt builder and prefix-cached scorer."""

    def __init__(self, scorer: Any, builder: Any, prompt: Any, tokenizer: Any):
        self.scorer, self.builder, self.prompt, self.tokenizer = scorer, builder, prompt, tokenizer


class Recommender:
    """Retrieval and re-ranking over a finished run folder.

    Args:
        run_dir: the output folder of ``binllm run``.
        include_valid: also exclude (and use as prompt history) the valid split's interactions,
            besides train's.
        device, dtype: for the LLM ('auto': CUDA + bf16 when there is a GPU, else CPU + float32).
        batch_size: suffixes per forward pass when re-ranking.
        progress: progress bars.
    """

    def __init__(self, run_dir: str | os.PathLike, include_valid: bool = False, device: str = "auto",
                 dtype: str = "auto", batch_size: int = 32, progress: bool = True):
        from . import data
        from .codebook import CodeBook

        run = Path(run_dir)
        if not run.is_dir():
            raise ValueError(f"run_dir {run_dir} is not a folder (give the output folder of `binllm run`)")
        data_dir = run_data_dir(run)
        if not (data_dir / "meta.json").is_file():
            raise ValueError(f"run_dir {run_dir} has no prepared dataset ({data_dir}/meta.json); is it a `binllm run` "
                             "folder?")
        cb_path = run / "hash" / "codebook.safetensors"
        if not cb_path.is_file():
            raise ValueError(f"run_dir {run_dir} has no code book ({cb_path}); run `binllm run` or `binllm pretrain`")
        self.run_dir, self.include_valid = run, include_valid
        self.device, self.dtype, self.batch_size, self.progress = device, dtype, batch_size, progress
        self.prep = data.load_prepared(data_dir)
        self.codebook = CodeBook.load(cb_path)
        try:
            self.codebook.check_dataset(self.prep)
        except ValueError as e:
            raise ValueError(f"run_dir {run_dir}: {e}") from None
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
        self._mf: tuple[np.ndarray, np.ndarray] | None = None
        self._rerankers: dict[str, _Reranker] = {}

    # ---------------------------------------------------------------- ids

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

    # ---------------------------------------------------------------- stage 1

    def retrieve(self, slots: np.ndarray, n: int, method: str = "binmf") -> RecLists:
        """Top-n items per user slot by 'binmf' (packed codes), 'mf' (float MF) or 'popularity'."""
        if n < 1:
            raise ValueError(f"n must be >= 1; got {n}")
        off, ex = self.exclusions(slots)
        if method == "binmf":
            cb = self.codebook
            s, i = retrieve_codes(cb.user_codes[slots], cb.item_codes[1:], cb.d, n, off, ex)
        elif method == "mf":
            if self._mf is None:
                self._mf = _load_mf(self.run_dir)
            u, it = self._mf
            s, i = _retrieve_dense(u[slots], it[1:], n, off, ex)
        elif method == "popularity":
            tr = self.prep.split("train")
            pop = np.bincount(tr["iid"].to_numpy()[tr["label"].to_numpy() == 1],
                              minlength=self.prep.n_item_slots)[1:].astype(np.float32)
            order = np.argsort(-pop, kind="stable")  # ties: lower slot first
            s, i = _retrieve_ranked(order, pop, len(slots), n, off, ex)
        else:
            raise ValueError(f"method must be 'binmf', 'mf' or 'popularity'; got {method!r}")
        items = np.where(i >= 0, i + 1, NONE_ITEM)
        return RecLists(slots, items, s)

    # ---------------------------------------------------------------- stage 2

    def reranker(self, method: str) -> _Reranker:
        """The adapter of `method` ('text' or 'binllm') loaded once."""
        if method not in RERANK_METHODS:
            raise ValueError(f"rerank must be None or one of {RERANK_METHODS}; got {method!r}")
        if method in self._rerankers:
            return self._rerankers[method]
        from peft import PeftModel

        from . import scoring
        from .prefix_scoring import PrefixScorer
        from .prompts import PromptBuilder, PromptConfig

        adir = _adapter_dir(self.run_dir, method)
        info_path = adir / "binllm.json"
        if not (adir / "adapter_config.json").is_file() or not info_path.is_file():
            raise ValueError(f"rerank={method!r}: run_dir {self.run_dir} has no tuned adapter at {adir} "
                             "(adapter_config.json + binllm.json); finish `binllm run` first")
        info = json.loads(info_path.read_text())
        meta = info.get("meta", info)
        if not isinstance(meta.get("prompt"), dict) or not meta.get("model"):
            raise ValueError(f"rerank={method!r}: {info_path} lacks the prompt settings or the base model")
        pc = PromptConfig(**meta["prompt"])
        if pc.uses_codes and meta.get("codebook_fingerprint") != self.codebook.fingerprint:
            raise ValueError(f"rerank={method!r}: the adapter at {adir} was tuned with another code book "
                             "(codebook_fingerprint differs from the run's hash/codebook.safetensors)")
        base, tok = scoring.load_llm(meta["model"], dtype=self.dtype, device=self.device, progress=self.progress)
        model = PeftModel.from_pretrained(base, str(adir))
        model.eval()
        builder = PromptBuilder(pc, self.prep.titles, self.codebook if pc.uses_codes else None)
        rr = _Reranker(PrefixScorer(model, tok, batch_size=self.batch_size), builder, pc, tok)
        self._rerankers[method] = rr
        return rr

    def candidate_ids(self, rr: _Reranker, slot: int, items: np.ndarray) -> list[list[int]]:
        """Token ids of the prompts of one user's candidates (history capped to fit 1024 tokens)."""
        from . import scoring

        hist = self.history(slot, rr.prompt.max_titles)
        u = np.full(len(items), slot)

        def build(pos: np.ndarray, caps: np.ndarray) -> list[str]:
            return rr.builder.build(u[pos], items[pos], [hist] * len(pos), caps)

        ids, _ = scoring.fit_prompts(rr.tokenizer, build, len(items), rr.prompt.max_titles, 1024)
        return ids

    def rerank(self, lists: RecLists, method: str, k: int, users_per_pass: int = 64) -> RecLists:
        """Re-orders each user's candidates by the adapter's Yes-logit and keeps the top k
        (ties: retrieval score, then retrieval rank)."""
        rr = self.reranker(method)
        q, n = lists.items.shape
        llm = np.full((q, n), -np.inf, np.float32)
        for a in range(0, q, users_per_pass):
            groups, where = [], []
            for r in range(a, min(q, a + users_per_pass)):
                ok = np.flatnonzero(lists.items[r] > 0)
                if len(ok):
                    groups.append(self.candidate_ids(rr, int(lists.users[r]), lists.items[r, ok]))
                    where.append((r, ok))
            scores = rr.scorer.score_groups(groups, progress=self.progress, desc=f"re-rank ({method})")
            for (r, ok), s in zip(where, scores):
                llm[r, ok] = s
        ret = lists.retrieval.astype(np.float64)
        rank = np.broadcast_to(np.arange(n), (q, n))
        order = np.lexsort((rank, -ret, -llm.astype(np.float64)), axis=-1)[:, :k]
        take = lambda a: np.take_along_axis(a, order, 1)  # noqa: E731
        items, llm_k = take(lists.items), take(llm)
        llm_k[items <= 0] = np.nan
        return RecLists(lists.users, items, take(lists.retrieval), llm_k)

    def recommend(self, users: Iterable[Any] | None = None, n: int = 50, k: int = 10,
                  rerank: str | None = None) -> RecLists:
        """Top-k lists: retrieval of n candidates, then (optionally) re-ranking."""
        _check_nk(n, k)
        if rerank is not None and rerank not in RERANK_METHODS:
            raise ValueError(f"rerank must be None or one of {RERANK_METHODS}; got {rerank!r}")
        slots = self.user_slots(users)
        if rerank is not None:
            self.reranker(rerank)  # a missing adapter fails before retrieval work
        lists = self.retrieve(slots, n)
        if rerank is None:
            return RecLists(slots, lists.items[:, :k], lists.retrieval[:, :k], None)
        return self.rerank(lists, rerank, k)

    # ---------------------------------------------------------------- output

    def write(self, lists: RecLists, out: str | os.PathLike, fmt: str = "jsonl") -> Path:
        """Writes lists with raw ids (user, rank, item, title, retrieval_score, llm_score) atomically."""
        if fmt not in FORMATS:
            raise ValueError(f"fmt must be one of {FORMATS}; got {fmt!r}")
        uids, iids, titles = self.prep.user_ids, self.prep.item_ids, self.prep.titles
        integral = np.issubdtype(lists.retrieval.dtype, np.integer)

        def writer(tmp: Path) -> None:
            with open(tmp, "w", encoding="utf-8", newline="\n") as f:
                if fmt == "tsv":
                    f.write("user\trank\titem\ttitle\tretrieval_score\tllm_score\n")
                for r in range(len(lists.users)):
                    user = str(uids[lists.users[r]])
                    for c in range(lists.items.shape[1]):
                        it = int(lists.items[r, c])
                        if it <= 0:
                            break
                        rs = lists.retrieval[r, c]
                        rs_v: int | float = int(rs) if integral else float(rs)
                        ls = None if lists.llm is None else float(lists.llm[r, c])
                        if fmt == "jsonl":
                            f.write(json.dumps({"user": user, "rank": c + 1, "item": str(iids[it]),
                                                "title": str(titles[it]), "retrieval_score": rs_v,
                                                "llm_score": ls}, ensure_ascii=False) + "\n")
                        else:
                            t = " ".join(str(titles[it]).split())  # no tabs/newlines inside a field
                            f.write(f"{user}\t{c + 1}\t{iids[it]}\t{t}\t{rs_v}\t{'' if ls is None else repr(ls)}\n")

        return _io.atomic_save(out, writer)


def _check_nk(n: int, k: int) -> None:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be an integer >= 1; got {k!r}")
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < k:
        raise ValueError(f"n must be an integer >= k (candidates per user, here k={k}); got {n!r}")


def recommend(run_dir: str | os.PathLike, out: str | os.PathLike, users: Sequence[Any] | None = None, n: int = 50,
              k: int = 10, rerank: str | None = None, fmt: str = "jsonl", include_valid: bool = False,
              progress: bool = True, device: str = "auto", dtype: str = "auto") -> Path:
    """Writes top-k recommendation lists of a run folder to `out`; returns its path.

    Args:
        run_dir: the output folder of ``binllm run``.
        out: the output file (JSON lines or TSV), written atomically.
        users: raw user ids of the input data (None: every user).
        n: candidates retrieved per user by the packed codes (>= k).
        k: items per final list (>= 1).
        rerank: None (retrieval order), 'text' (text-only adapter) or 'binllm' (BinLLM adapter).
        fmt: 'jsonl' or 'tsv'.
        include_valid: also exclude the items rated in valid (and use them as prompt history).
        device, dtype: for the LLM.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}; got {fmt!r}")
    _check_nk(n, k)
    from .locks import hold

    with hold(out):  # one writer of `out` at a time (binllm.locks)
        rec = Recommender(run_dir, include_valid=include_valid, device=device, dtype=dtype, progress=progress)
        return rec.write(rec.recommend(users, n, k, rerank), out, fmt)


# ====================================================================== evaluation


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lower, upper): percentile bootstrap interval of the mean over users."""
    v = np.asarray(values, np.float64)
    if v.ndim != 1:
        raise ValueError(f"values must be 1-D; got shape {v.shape}")
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    if n_boot < 1 or not 0 < level < 1:
        raise ValueError(f"n_boot must be >= 1 and 0 < level < 1; got {n_boot}, {level}")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    step = max(1, (1 << 22) // len(v))  # bound the (resamples, users) index block to ~4M
    for a in range(0, n_boot, step):
        b = min(n_boot, a + step)
        means[a:b] = v[rng.integers(0, len(v), (b - a, len(v)))].mean(axis=1)
    lo, hi = np.percentile(means, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(v.mean()), float(lo), float(hi)


def list_metrics(items: np.ndarray, targets_off: np.ndarray, targets: np.ndarray,
                 k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-user HR@k and NDCG@k (float64 (q,) each) of ranked item lists.

    Args:
        items: int (q, >= k) ranked items (<= 0: none); targets_off, targets: CSR of each user's
            relevant items (every user has at least one).
    """
    q = len(items)
    top = items[:, :k].astype(np.int64)
    cnt = np.diff(targets_off)
    big = int(max(top.max(initial=0), targets.max(initial=0))) + 1
    tk = np.sort(np.repeat(np.arange(q, dtype=np.int64), cnt) * big + targets.astype(np.int64))
    ck = np.arange(q, dtype=np.int64)[:, None] * big + top
    pos = np.minimum(np.searchsorted(tk, ck), max(len(tk) - 1, 0))
    hit = (tk[pos] == ck) & (top > 0) if len(tk) else np.zeros_like(top, bool)
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    idcg = np.cumsum(disc)[np.minimum(cnt, k) - 1]
    hit_rate = np.asarray(hit.any(axis=1), dtype=np.float64)
    return hit_rate, np.asarray((hit * disc).sum(axis=1) / idcg, dtype=np.float64)


def evaluate_lists(run_dir: str | os.PathLike, users: int | None = None, ks: Sequence[int] = (5, 10, 20),
                   n: int = 50, rerank_methods: Sequence[str] = RERANK_METHODS, rerank_users: int = 8,
                   seed: int = 0, include_valid: bool = True, n_boot: int = 1000, progress: bool = True,
                   device: str = "auto", dtype: str = "auto") -> dict:
    """HR@k and NDCG@k of recommendation lists on each user's test positives.

    Users: those with at least one test positive not rated in the known splits; `users`
    samples that many of them (None: all). Retrieval rows (popularity, BinMF, MF) rank the
    whole catalogue minus the excluded items; re-ranking rows re-order BinMF's n candidates
    and run on a sample of `rerank_users` of the evaluated users (re-ranking is slow on a
    CPU), next to BinMF retrieval on the same users. 95% percentile-bootstrap intervals
    over users.

    Args:
        include_valid: exclude valid's interactions too (they precede the test period).
    Returns:
        {"settings": ..., "rows": {name: {"users": int, "HR@k": [mean, lo, hi], "NDCG@k": [...]}}}.
    """
    ks = tuple(int(x) for x in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be a non-empty list of integers >= 1; got {ks}")
    _check_nk(n, max(ks))
    if users is not None and (not isinstance(users, (int, np.integer)) or users < 1):
        raise ValueError(f"users must be None (all users) or a sample size >= 1; got {users!r}")
    if rerank_users < 0:
        raise ValueError(f"rerank_users must be >= 0; got {rerank_users}")
    for m in rerank_methods:
        if m not in RERANK_METHODS:
            raise ValueError(f"rerank_methods must hold values of {RERANK_METHODS}; got {m!r}")
    rec = Recommender(run_dir, include_valid=include_valid, device=device, dtype=dtype, progress=progress)
    prep = rec.prep
    te = prep.split("test")
    te = te[te["label"].to_numpy() == 1]
    keys = np.unique(te["uid"].to_numpy().astype(np.int64) * prep.n_item_slots + te["iid"].to_numpy())
    tu, ti = keys // prep.n_item_slots, keys % prep.n_item_slots
    # drop targets the user already rated in the known splits: they can never be recommended
    ek = np.repeat(np.arange(prep.n_user_slots), np.diff(rec._excl_off)) * prep.n_item_slots + rec._excl_items + 1
    known = np.isin(keys, ek)
    dropped = int(known.sum())
    tu, ti = tu[~known], ti[~known]
    cand = np.unique(tu)
    rng = np.random.default_rng(seed)
    slots = cand if users is None or users >= len(cand) else np.sort(rng.choice(cand, users, replace=False))
    rr_slots = slots if rerank_users >= len(slots) else np.sort(rng.choice(slots, rerank_users, replace=False))

    def targets_of(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a, b = np.searchsorted(tu, s), np.searchsorted(tu, s, side="right")
        cnt = b - a
        off = np.r_[0, np.cumsum(cnt)].astype(np.int64)
        return off, ti[np.arange(off[-1]) - np.repeat(off[:-1] - a, cnt)]

    def row(items: np.ndarray, s: np.ndarray, boot_seed: int) -> dict:
        off, tg = targets_of(s)
        out: dict[str, Any] = {"users": int(len(s))}
        for k in ks:
            hr, nd = list_metrics(items, off, tg, k)
            out[f"HR@{k}"] = list(bootstrap_ci(hr, n_boot, boot_seed))
            out[f"NDCG@{k}"] = list(bootstrap_ci(nd, n_boot, boot_seed))
        return out

    kmax = max(ks)
    rows: dict[str, dict] = {}
    rows["item popularity"] = row(rec.retrieve(slots, kmax, "popularity").items, slots, seed)
    rows["BinMF retrieval"] = row(rec.retrieve(slots, kmax, "binmf").items, slots, seed)
    if (Path(run_dir) / "hash" / "mf" / "checkpoint.pt").is_file():
        rows["MF retrieval"] = row(rec.retrieve(slots, kmax, "mf").items, slots, seed)
    if rerank_methods and len(rr_slots):
        cands = rec.retrieve(rr_slots, n, "binmf")
        rows["BinMF retrieval (re-rank users)"] = row(cands.items, rr_slots, seed)
        names = {"text": "BinMF + text-only re-rank", "binllm": "BinMF + BinLLM re-rank"}
        for m in rerank_methods:
            rows[names[m]] = row(rec.rerank(cands, m, kmax).items, rr_slots, seed)
    return {"settings": {"run_dir": str(run_dir), "ks": list(ks), "n": n, "users": int(len(slots)),
                         "users_with_test_positives": int(len(cand)), "rerank_users": int(len(rr_slots)),
                         "rerank_methods": list(rerank_methods), "include_valid": include_valid, "seed": seed,
                         "n_boot": n_boot, "targets_dropped_as_known": dropped},
            "rows": rows}


def lists_markdown(res: dict, digits: int = 4) -> str:
    """Markdown table of :func:`evaluate_lists` results: mean [95% interval] per metric."""
    s = res["settings"]
    cols = [f"{m}@{k}" for k in s["ks"] for m in ("HR", "NDCG")]
    head = (f"Users with test positives: {s['users']} evaluated ({s['users_with_test_positives']} in all), "
            f"re-ranking on {s['rerank_users']} of them over {s['n']} BinMF candidates; 95% percentile-bootstrap "
            f"intervals over users ({s['n_boot']} resamples).")
    lines = [head, "",
             "| method | users | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for name, r in res["rows"].items():
        cells = [f"{r[c][0]:.{digits}f} [{r[c][1]:.{digits}f}, {r[c][2]:.{digits}f}]" for c in cols]
        lines.append(f"| {name} | {r['users']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
