"""Yes/No scoring of many prompts that share a long prefix, with one prefix pass.

Re-ranking scores the N candidates of a user with prompts that are equal up to
the target item (history titles, and the user code when the template puts it
first). :class:`PrefixScorer` runs that shared prefix once per group with
``use_cache=True`` and reuses its key/value cache for all suffixes.

* The shared prefix is found on the token ids, not on the text: it is the
  longest common token prefix of the group's tokenized prompts (at least one
  token is left in every suffix). So the model sees exactly the tokens the
  full-prompt :class:`binllm.llm.scoring.Scorer` sees, whatever the template or
  tokenizer (a text split would change tokens at the boundary with BPE).
* Suffixes are batched; the prefix cache is expanded along the batch
  (``expand``: a view, no copy). Suffixes of one batch are left-padded *after*
  the prefix: the attention mask zeroes the pads and explicit position ids
  continue from the prefix length, so each suffix's last real token is the
  last column and ``logits_to_keep`` (the last position) reads it (the vocabulary matmul runs
  on one position per row, as in the full scorer). Batches are grouped by
  suffix length to keep pads few.
* Works with a peft model (the adapter is active in the prefix pass too) and
  with both cache APIs of Hugging Face transformers: the ``cache=`` keyword of
  transformers >= 5 and ``past_key_values=`` of earlier versions, a
  ``DynamicCache`` either way.
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np

from binllm.llm.scoring import answer_scores, answer_token_ids, check_scorer, collate_left, keep_last, pad_id


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of token-id lists (0 for none)."""
    if not seqs:
        return 0
    first = seqs[0]
    n = min(len(s) for s in seqs)
    if len(seqs) == 1:
        return n
    arr = np.full((len(seqs), n), -1, np.int64)
    for r, s in enumerate(seqs):
        arr[r] = np.asarray(s[:n], np.int64)
    same = (arr == np.asarray(first[:n], np.int64)).all(axis=0)
    bad = np.flatnonzero(~same)
    return int(bad[0]) if len(bad) else n


def _causal_lm(model: Any) -> Any:
    """The transformers model under a peft wrapper (for the forward signature)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def _cache_keyword(model: Any) -> str:
    """'cache' (transformers >= 5) or 'past_key_values' (earlier)."""
    params = inspect.signature(_causal_lm(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _cache_tensors(cache: Any) -> list[tuple[Any, Any]]:
    """(keys, values) per layer, each (batch, kv heads, length, head dim)."""
    if hasattr(cache, "layers"):  # transformers >= 4.56 (Cache of CacheLayer objects)
        return [(layer.keys, layer.values) for layer in cache.layers]
    if hasattr(cache, "key_cache"):  # older DynamicCache
        return list(zip(cache.key_cache, cache.value_cache))
    return [(k, v) for k, v in cache]  # legacy tuple of tuples


def _expanded_cache(kv: list[tuple[Any, Any]], batch: int) -> Any:
    """A fresh DynamicCache holding the prefix states expanded to `batch` rows
    (views; the suffix pass appends to it, so each batch needs its own)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for layer, (k, v) in enumerate(kv):
        cache.update(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1), layer)
    return cache


class PrefixScorer:
    """Yes/No scores of prompt groups that share a prefix, one prefix pass per group.

    Args:
        model, tokenizer: from :func:`binllm.llm.scoring.load_llm` (a peft model works too).
        mode: 'yes_logit' (the reference) or 'p_yes' (softmax over the Yes/No pair).
        batch_size: suffixes per forward pass.
        min_prefix: groups whose shared prefix is shorter than this many tokens
            are scored as full prompts (caching a tiny prefix saves nothing).
    """

    def __init__(self, model: Any, tokenizer: Any, mode: str = "yes_logit", batch_size: int = 32,
                 min_prefix: int = 8, yes: str = " Yes", no: str = " No"):
        check_scorer(mode, batch_size)
        if isinstance(min_prefix, bool) or not isinstance(min_prefix, int) or min_prefix < 1:
            raise ValueError(f"min_prefix must be an integer >= 1; got {min_prefix!r}")
        self.model, self.tokenizer, self.mode = model, tokenizer, mode
        self.batch_size, self.min_prefix = batch_size, min_prefix
        self.yes_id, self.no_id = answer_token_ids(tokenizer, yes, no)
        self._kw = _cache_keyword(model)
        self.pad_id = pad_id(tokenizer)
        # tokens run through the model, for the benchmark's accounting
        self.tokens_run = 0

    def _score_group(self, ids: Sequence[Sequence[int]], dev: Any) -> np.ndarray:
        import torch

        n = len(ids)
        out = np.empty(n, np.float32)
        p = min(common_prefix_len(ids), min(len(x) for x in ids) - 1)  # >= 1 token per suffix
        if p < self.min_prefix:
            p = 0
        kv: list[tuple[Any, Any]] = []
        if p:
            prefix = torch.as_tensor([list(ids[0][:p])], dtype=torch.long, device=dev)
            res = self.model(input_ids=prefix, attention_mask=torch.ones_like(prefix),
                             position_ids=torch.arange(p, device=dev)[None], use_cache=True,
                             logits_to_keep=keep_last(p, dev))
            cache = getattr(res, "cache", None)
            if cache is None:
                cache = res.past_key_values
            kv = _cache_tensors(cache)
            self.tokens_run += p
        suffixes = [list(x[p:]) for x in ids]
        order = np.argsort([len(s) for s in suffixes], kind="stable")
        for b in range(0, n, self.batch_size):
            sel = order[b:b + self.batch_size]
            rows = [suffixes[i] for i in sel]
            t, m, pos = collate_left(rows, self.pad_id, prefix=p)  # positions go on from the prefix
            width = t.shape[1]
            kwargs: dict[str, Any] = dict(input_ids=t.to(dev), attention_mask=m.to(dev), position_ids=pos.to(dev),
                                          logits_to_keep=keep_last(width, dev))
            if p:
                kwargs.update({self._kw: _expanded_cache(kv, len(rows)), "use_cache": True})
            else:
                kwargs["use_cache"] = False
            logits = self.model(**kwargs).logits[:, -1, :]
            out[sel] = answer_scores(logits, self.mode, self.yes_id, self.no_id).cpu().numpy()
            self.tokens_run += sum(len(s) for s in rows)
        return out

    def score_groups(self, groups: Sequence[Sequence[Sequence[int]]], progress: bool = False,
                     desc: str = "score") -> list[np.ndarray]:
        """Scores of every prompt of every group: float32 (len(group),) each, in the given order.

        Args:
            groups: lists of token-id lists; prompts of a group should share a prefix
                (e.g. the candidates of one user); any lists are scored correctly.
        """
        import torch
        from tqdm.auto import tqdm

        for g, ids in enumerate(groups):
            if any(len(x) == 0 for x in ids):
                raise ValueError(f"groups[{g}] has a prompt that tokenized to no tokens")
        dev = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        res: list[np.ndarray] = []
        try:
            with torch.inference_mode():
                for ids in tqdm(groups, desc=desc, disable=None if progress else True, leave=False):
                    res.append(self._score_group(ids, dev) if len(ids) else np.empty(0, np.float32))
        finally:
            self.model.train(was_training)
        return res

    def score_ids(self, ids: Sequence[Sequence[int]], group: Sequence[int] | np.ndarray,
                  progress: bool = False) -> np.ndarray:
        """Scores of prompts in one flat list; `group[i]` names the group of prompt i
        (prompts of one group share a prefix). float32 (len(ids),)."""
        g = np.asarray(group)
        if g.shape != (len(ids),):
            raise ValueError(f"group must have one entry per prompt ({len(ids)}); got shape {g.shape}")
        out = np.empty(len(ids), np.float32)
        keys, inv = np.unique(g, return_inverse=True)
        members = [np.flatnonzero(inv == k) for k in range(len(keys))]
        scores = self.score_groups([[ids[int(i)] for i in m] for m in members], progress)
        for m, s in zip(members, scores):
            out[m] = s
        return out
