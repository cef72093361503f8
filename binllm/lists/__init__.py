"""Recommendation lists of a finished run: top-N retrieval from the whole catalogue by packed
codes, optional LLM re-ranking of the candidates, the list files, and HR@k / NDCG@k with
bootstrap intervals.

* Stage 1 (retrieval, :mod:`~binllm.lists.candidates` over :mod:`binllm.cf.retrieval`): the top-N
  items of each user by the +-1 inner product of packed codes (:func:`binllm.topk`), without the
  items the user rated in train (and, optionally, valid). The codes are the run's **retrieval code
  book** (``hash/retrieval_codebook.safetensors``: codes trained for top-N lists, see
  :class:`binllm.cf.hashing.HashConfig`'s ``objective``) when it has one, else its prompt code book
  (``hash/codebook.safetensors``, the BinMF codes the prompts carry). Equal scores are ordered by
  item popularity (train positives, most popular first), then the lower item slot; a user without
  a known interaction (whose code was never trained) gets the popularity list instead.
* Stage 2 (re-ranking, optional, :mod:`~binllm.lists.rerank`): the N candidates of each user are
  scored by a tuned LoRA adapter of the run (text-only or BinLLM) with the Yes-logit, through
  :class:`binllm.llm.prefix_scoring.PrefixScorer` (the prompt up to the target item runs once per
  user), prompts fitted to the adapter's recorded max length. The final top-k is ordered by LLM
  score, then retrieval score, then retrieval rank.
* :class:`Recommender` (:mod:`~binllm.lists.recommender`) puts both over a run folder
  (:mod:`~binllm.lists.folder` knows its paths); :func:`recommend` writes the lists
  (:mod:`~binllm.lists.output`, JSON lines or TSV with raw ids, atomically).
* :func:`evaluate_lists` (:mod:`~binllm.lists.evaluate`): the list table of ``binllm run``.

May import: the leaves, ``binllm.kernels``, ``binllm.data``, ``binllm.cf``, ``binllm.llm``;
never ``binllm.run`` or the command line.
"""
from __future__ import annotations

from binllm.cf.retrieval import NONE_ITEM, filter_excluded, retrieve_codes
from binllm.lists.candidates import RETRIEVAL_METHODS, Candidates, RecLists
from binllm.lists.evaluate import FLOAT_ROWS, POPULARITY_ROW, RERANK_ROWS, evaluate_lists, lists_markdown
from binllm.lists.output import FORMATS, write_lists
from binllm.lists.recommender import CODEBOOK_CHOICES, Recommender, recommend
from binllm.lists.rerank import RERANK_METHODS, Reranker
from binllm.metrics import list_metrics

__all__ = [
    "CODEBOOK_CHOICES", "FLOAT_ROWS", "FORMATS", "NONE_ITEM", "POPULARITY_ROW", "RERANK_METHODS", "RERANK_ROWS",
    "RETRIEVAL_METHODS", "Candidates", "RecLists", "Recommender", "Reranker", "evaluate_lists", "filter_excluded",
    "list_metrics", "lists_markdown", "recommend", "retrieve_codes", "write_lists",
]
