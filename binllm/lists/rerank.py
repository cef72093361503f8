"""Stage 2 of the lists: a tuned adapter of a run re-orders each user's candidates by its
Yes-logit, one prefix pass per user (:class:`binllm.llm.prefix_scoring.PrefixScorer`), with
prompts fitted to the length the adapter was tuned at.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from binllm.lists import folder
from binllm.lists.candidates import RecLists

if TYPE_CHECKING:
    from binllm.cf.codebook import CodeBook
    from binllm.data import Prepared

RERANK_METHODS = ("text", "binllm")


class Reranker:
    """The adapter of `method` ('text' or 'binllm') of a run, with its prompt builder, prefix-cached
    scorer and the prompt length it was tuned at.

    Args:
        run_dir: the run folder; prep, codebook: its dataset and prompt code book.
        device, dtype: for the LLM; batch_size: suffixes per forward pass; progress: progress bars.
    Raises:
        ValueError: an unknown method, a missing adapter, an adapter without its prompt settings,
            or one tuned with another code book.
    """

    def __init__(self, run_dir: str | os.PathLike, method: str, prep: Prepared, codebook: CodeBook,
                 device: str = "auto", dtype: str = "auto", batch_size: int = 32, progress: bool = True):
        if method not in RERANK_METHODS:
            raise ValueError(f"rerank must be None or one of {RERANK_METHODS}; got {method!r}")
        from binllm.llm import scoring
        from binllm.llm.prefix_scoring import PrefixScorer
        from binllm.llm.prompts import PromptBuilder, PromptConfig

        self.run_dir, self.method, self.progress = Path(run_dir), method, progress
        adir = folder.adapter_dir(self.run_dir, method)
        info_path = adir / "binllm.json"
        if not (adir / "adapter_config.json").is_file() or not info_path.is_file():
            raise ValueError(f"rerank={method!r}: run_dir {self.run_dir} has no tuned adapter at {adir} "
                             "(adapter_config.json + binllm.json); finish `binllm run` first")
        info = json.loads(info_path.read_text())
        meta = info.get("meta", info)
        if not isinstance(meta.get("prompt"), dict) or not meta.get("model"):
            raise ValueError(f"rerank={method!r}: {info_path} lacks the prompt settings or the base model")
        self.prompt = PromptConfig(**meta["prompt"])
        if self.prompt.uses_codes and meta.get("codebook_fingerprint") != codebook.fingerprint:
            raise ValueError(f"rerank={method!r}: the adapter at {adir} was tuned with another code book "
                             "(codebook_fingerprint differs from the run's hash/codebook.safetensors)")
        base, self.tokenizer = scoring.load_llm(meta["model"], dtype=dtype, device=device, progress=progress)
        model = scoring.with_adapter(base, adir)
        self.builder = PromptBuilder(self.prompt, prep.titles, codebook if self.prompt.uses_codes else None)
        # the length prompts were fitted to when the adapter was tuned and scored (stages.tune records it)
        self.max_length = int(meta.get("max_length", 1024))
        self.scorer = PrefixScorer(model, self.tokenizer, batch_size=batch_size)

    def candidate_ids(self, hist: np.ndarray, slot: int, items: np.ndarray) -> list[list[int]]:
        """Token ids of the prompts of one user's candidates; `hist`: the user's latest liked items
        (at most ``prompt.max_titles``, oldest first), capped further to fit the adapter's max length."""
        from binllm.llm import scoring

        u = np.full(len(items), slot)

        def build(pos: np.ndarray, caps: np.ndarray) -> list[str]:
            return self.builder.build(u[pos], items[pos], [hist] * len(pos), caps)

        ids, _ = scoring.fit_prompts(self.tokenizer, build, len(items), self.prompt.max_titles, self.max_length)
        return ids

    def rerank(self, lists: RecLists, k: int, history: Callable[[int, int], np.ndarray],
               users_per_pass: int = 64) -> RecLists:
        """Re-orders each user's candidates by the adapter's Yes-logit and keeps the top k
        (ties: retrieval score, then retrieval rank); `history(slot, n)` gives a user's latest n liked
        items (:meth:`binllm.lists.candidates.Candidates.history`)."""
        q, n = lists.items.shape
        llm = np.full((q, n), -np.inf, np.float32)
        for a in range(0, q, users_per_pass):
            groups, where = [], []
            for r in range(a, min(q, a + users_per_pass)):
                ok = np.flatnonzero(lists.items[r] > 0)
                if len(ok):
                    slot = int(lists.users[r])
                    groups.append(self.candidate_ids(history(slot, self.prompt.max_titles), slot, lists.items[r, ok]))
                    where.append((r, ok))
            scores = self.scorer.score_groups(groups, progress=self.progress, desc=f"re-rank ({self.method})")
            for (r, ok), s in zip(where, scores):
                llm[r, ok] = s
        ret = lists.retrieval.astype(np.float64)
        rank = np.broadcast_to(np.arange(n), (q, n))
        order = np.lexsort((rank, -ret, -llm.astype(np.float64)), axis=-1)[:, :k]
        take = lambda a: np.take_along_axis(a, order, 1)  # noqa: E731
        items, llm_k = take(lists.items), take(llm)
        llm_k[items <= 0] = np.nan
        return RecLists(lists.users, items, take(lists.retrieval), llm_k, lists.backfilled)
