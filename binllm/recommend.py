"""Recommendation lists from a finished ``binllm run`` folder: candidate
retrieval by packed codes, then optional LLM re-ranking, and their evaluation.

* Stage 1 (retrieval, :mod:`binllm.retrieval`): the top-N items of each user
  by the +-1 inner product of packed codes (:func:`binllm.topk`), without the
  items the user rated in train (and, optionally, valid). The codes are the
  run's **retrieval code book** (``hash/retrieval_codebook.safetensors``: codes
  trained for top-N lists, see :class:`binllm.hashing.HashConfig`'s
  ``objective``) when it has one, else its prompt code book
  (``hash/codebook.safetensors``, the BinMF codes the prompts carry). Equal
  scores are ordered by item popularity (train positives, most popular first),
  then the lower item slot; a user without a known interaction (whose code was
  never trained) gets the popularity list instead.
* Stage 2 (re-ranking, optional): the N candidates of each user are scored by
  a tuned LoRA adapter of the run (text-only or BinLLM) with the Yes-logit,
  through :class:`binllm.prefix_scoring.PrefixScorer` (the prompt up to the
  target item runs once per user), prompts fitted to the adapter's recorded
  max length. The final top-k is ordered by LLM score, then retrieval score,
  then retrieval rank.
* Output: JSON lines or TSV with raw user and item ids, rank, title, retrieval
  and LLM score, written atomically.
* :func:`evaluate_lists`: HR@k and NDCG@k on each user's test positives, with
  bootstrap intervals over users, for item popularity, the float anchors (MF;
  `implicit` ALS and BPR when installed, :mod:`binllm.anchors`), both code
  books, and re-ranking of the retrieval candidates on a user sample; paired
  bootstrap intervals of the differences that matter (codes - popularity,
  codes - the best float model, re-rank - its candidates).

Run folder layout (see :mod:`binllm.pipeline`): ``data/`` (prepared dataset),
``hash/codebook.safetensors``, ``hash/retrieval_codebook.safetensors``,
``hash/mf/checkpoint.pt``, ``llm/text/adapter`` and
``llm/binllm_<style>/adapter`` (with ``binllm.json``).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import _io, metrics, retrieval
from .progress import log
from .retrieval import NONE_ITEM, filter_excluded, retrieve_codes  # noqa: F401  (the names' old home)

RERANK_METHODS = ("text", "binllm")
FORMATS = ("jsonl", "tsv")
#: Retrieval methods of :meth:`Recommender.retrieve`: 'codes' (the retrieval code book, or the prompt
#: code book when the run has none), 'codes_no_prior' (its learned bits alone, without the popularity-prior
#: bits), 'binmf' (the prompt code book), 'mf' (float MF), 'popularity', and the `implicit` anchors 'als'
#: and 'bpr'.
RETRIEVAL_METHODS = ("codes", "codes_no_prior", "binmf", "mf", "popularity", "als", "bpr")
#: Which code book 'codes' retrieval uses: 'auto' (the retrieval code book when the run has one, else the
#: prompt code book), 'retrieval' (required) or 'prompt'.
CODEBOOK_CHOICES = ("auto", "retrieval", "prompt")
PROMPT_CODEBOOK = Path("hash") / "codebook.safetensors"
RETRIEVAL_CODEBOOK = Path("hash") / "retrieval_codebook.safetensors"


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


def _load_checked(path: Path, prep: Any, run_dir: str | os.PathLike) -> Any:
    """A code book of the run, checked against its dataset (errors name the run folder)."""
    from .codebook import CodeBook

    cb = CodeBook.load(path)
    try:
        cb.check_dataset(prep)
    except ValueError as e:
        raise ValueError(f"run_dir {run_dir}: {e}") from None
    return cb


def _learned_bits(cb: Any) -> tuple[np.ndarray, np.ndarray, int]:
    """The learned bits of a retrieval code book (its first ``learned_bits``, before the prior bits)."""
    from . import codes as _codes

    d = int(cb.config.get("learned_bits", cb.d))
    if d == cb.d:
        return cb.user_codes, cb.item_codes, d
    cut = lambda c: np.packbits(_codes.unpack_bits(c, cb.d)[:, :d], axis=1)  # noqa: E731
    return cut(cb.user_codes), cut(cb.item_codes), d


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
        backfilled: bool (q,): users given the popularity list because they have no known
            interaction (code retrieval only; None for the other methods).
    """

    users: np.ndarray
    items: np.ndarray
    retrieval: np.ndarray
    llm: np.ndarray | None = None
    backfilled: np.ndarray | None = None


class _Reranker:
    """A tuned adapter with its prompt builder, prefix-cached scorer and the prompt length it was tuned at."""

    def __init__(self, scorer: Any, builder: Any, prompt: Any, tokenizer: Any, max_length: int):
        self.scorer, self.builder, self.prompt, self.tokenizer = scorer, builder, prompt, tokenizer
        self.max_length = max_length


class Recommender:
    """Retrieval and re-ranking over a finished run folder.

    Args:
        run_dir: the output folder of ``binllm run``.
        include_valid: also exclude (and use as prompt history) the valid split's interactions,
            besides train's.
        device, dtype: for the LLM ('auto': CUDA + bf16 when there is a GPU, else CPU + float32).
        batch_size: suffixes per forward pass when re-ranking.
        progress: progress bars.
        codes: the code book of 'codes' retrieval, one of :data:`CODEBOOK_CHOICES`.
    """

    def __init__(self, run_dir: str | os.PathLike, include_valid: bool = False, device: str = "auto",
                 dtype: str = "auto", batch_size: int = 32, progress: bool = True, codes: str = "auto"):
        from . import data

        run = Path(run_dir)
        if not run.is_dir():
            raise ValueError(f"run_dir {run_dir} is not a folder (give the output folder of `binllm run`)")
        data_dir = run_data_dir(run)
        if not (data_dir / "meta.json").is_file():
            raise ValueError(f"run_dir {run_dir} has no prepared dataset ({data_dir}/meta.json); is it a `binllm run` "
                             "folder?")
        cb_path = run / PROMPT_CODEBOOK
        if not cb_path.is_file():
            raise ValueError(f"run_dir {run_dir} has no code book ({cb_path}); run `binllm run` or `binllm pretrain`")
        self.run_dir, self.include_valid = run, include_valid
        self.device, self.dtype, self.batch_size, self.progress = device, dtype, batch_size, progress
        self.prep = data.load_prepared(data_dir)
        if codes not in CODEBOOK_CHOICES:
            raise ValueError(f"codes must be one of {CODEBOOK_CHOICES}; got {codes!r}")
        #: the prompt code book (BinMF codes; the BinLLM adapter's prompts carry them)
        self.codebook = _load_checked(cb_path, self.prep, run_dir)
        r_path = run / RETRIEVAL_CODEBOOK
        if codes == "retrieval" and not r_path.is_file():
            raise ValueError(f"codes='retrieval': run_dir {run_dir} has no retrieval code book ({r_path}); train it "
                             "with `binllm run` (or `binllm pretrain --retrieval-objective softmax`)")
        use_retrieval = codes != "prompt" and r_path.is_file()
        #: the code book of 'codes' retrieval, and which one it is ('retrieval' or 'prompt')
        self.retrieval_codebook = _load_checked(r_path, self.prep, run_dir) if use_retrieval else self.codebook
        self.codes_source = "retrieval" if use_retrieval else "prompt"
        if codes == "auto" and not use_retrieval and progress:
            log(f"recommend: {run_dir} has no retrieval code book ({RETRIEVAL_CODEBOOK}); retrieving with the prompt "
                "code book. `binllm run` on the folder trains the retrieval codes and keeps everything else.")
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
                uc, ic, d = _learned_bits(cb)
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
                u, it = _load_mf(self.run_dir)
                self._dense[method] = (u, it[1:])
            else:
                from . import anchors

                self._dense[method] = anchors.implicit_factors(self.prep, method)
        return self._dense[method]

    # ---------------------------------------------------------------- stage 2

    def reranker(self, method: str) -> _Reranker:
        """The adapter of `method` ('text' or 'binllm') loaded once."""
        if method not in RERANK_METHODS:
            raise ValueError(f"rerank must be None or one of {RERANK_METHODS}; got {method!r}")
        if method in self._rerankers:
            return self._rerankers[method]
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
        model = scoring.with_adapter(base, adir)
        builder = PromptBuilder(pc, self.prep.titles, self.codebook if pc.uses_codes else None)
        # the length prompts were fitted to when the adapter was tuned and scored (stages.tune records it)
        max_length = int(meta.get("max_length", 1024))
        rr = _Reranker(PrefixScorer(model, tok, batch_size=self.batch_size), builder, pc, tok, max_length)
        self._rerankers[method] = rr
        return rr

    def candidate_ids(self, rr: _Reranker, slot: int, items: np.ndarray) -> list[list[int]]:
        """Token ids of the prompts of one user's candidates (history capped to fit the adapter's max length)."""
        from . import scoring

        hist = self.history(slot, rr.prompt.max_titles)
        u = np.full(len(items), slot)

        def build(pos: np.ndarray, caps: np.ndarray) -> list[str]:
            return rr.builder.build(u[pos], items[pos], [hist] * len(pos), caps)

        ids, _ = scoring.fit_prompts(rr.tokenizer, build, len(items), rr.prompt.max_titles, rr.max_length)
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
        return RecLists(lists.users, items, take(lists.retrieval), llm_k, lists.backfilled)

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
            return RecLists(slots, lists.items[:, :k], lists.retrieval[:, :k], None, lists.backfilled)
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
              progress: bool = True, device: str = "auto", dtype: str = "auto", codes: str = "auto") -> Path:
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
        codes: the code book candidates come from (:data:`CODEBOOK_CHOICES`; 'auto': the run's
            retrieval code book, else its prompt code book).
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}; got {fmt!r}")
    _check_nk(n, k)
    from .locks import hold

    with hold(out):  # one writer of `out` at a time (binllm.locks)
        rec = Recommender(run_dir, include_valid=include_valid, device=device, dtype=dtype, progress=progress,
                          codes=codes)
        return rec.write(rec.recommend(users, n, k, rerank), out, fmt)


# ====================================================================== evaluation

list_metrics = metrics.list_metrics  # the name's old home

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
    _check_nk(n, max(ks))
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
    if (rec.run_dir / "hash" / "mf" / "checkpoint.pt").is_file():
        floats.append("mf")
    if anchors:
        from . import anchors as _anchors

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
