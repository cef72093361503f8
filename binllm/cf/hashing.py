"""The text-like encoding ("hash") model: collaborative filtering with binary codes.

MF embeddings -> per-side ``Linear(d, d)`` + ``tanh`` -> ``sign`` with a
straight-through backward; the score is the +-1 inner product of a user and an
item code, trained as a logit with BCE. During training each element uses the
binary value with probability ``beta`` (else the tanh value); ``beta`` rises
by ``beta_step`` every ``beta_every`` epochs and then stays at 1, so the model
ends fully binary. Evaluation is always binary. A continuous MF baseline (the
paper's 256-d MF row) trains in the same loop.

The loop (:func:`train`) is whole-tensor: each epoch draws a permutation and
slices index batches from tensors, no DataLoader and no per-row Python; it
runs in the ``hash`` thread stage (:mod:`binllm.threads`: every core on a
quiet machine, one torch thread when the CPU is shared at start). Every evaluation writes an atomic
checkpoint (config, model, optimizer, RNG state and the loop state, all plain
dicts and tensors, so it loads with ``torch.load(weights_only=True)``);
``resume=True`` continues an interrupted run to the same result as an
uninterrupted one on the CPU, and an existing checkpoint is never overwritten
without it. :func:`load_best` rebuilds the best model from a run folder.

Optional regularisers (off by default, see bench/results/hashing_balance.md)
push each bit towards a 50/50 split over the batch (``balance_weight``) and
the bits towards decorrelation (``decorr_weight``); :func:`code_stats` reports
how well the bits are used (mean bit entropy, distinct codes).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from binllm import _io, metrics, threads
from binllm.kernels import codes as _codes

if TYPE_CHECKING:
    from binllm.data import Prepared


class SignSTE(torch.autograd.Function):
    """sign(x) in {-1, +1} (x >= 0 -> +1) with a straight-through gradient.

    Backward passes the output gradient unchanged (``clip=False``, the
    reference) or only where |x| <= 1 (``clip=True``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, clip: bool = False) -> torch.Tensor:
        ctx.clip = clip
        if clip:
            ctx.save_for_backward(x)
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.clip:
            (x,) = ctx.saved_tensors
            return grad * (x.abs() <= 1).to(grad.dtype), None
        return grad, None


def sign_ste(x: torch.Tensor, clip: bool = False) -> torch.Tensor:
    """Straight-through sign: forward ``x >= 0 -> +1 else -1``; see :class:`SignSTE`."""
    return SignSTE.apply(x, clip)


#: Training objectives of :class:`HashConfig` (see its ``objective``).
OBJECTIVES = ("bce", "bpr", "softmax")


@dataclass
class HashConfig:
    """Settings of the hash model and of its training loop.

    Args:
        model: ``"hash"`` (binary codes) or ``"mf"`` (continuous MF baseline).
        d: code bits (hash) or embedding size (MF; the paper's baseline uses 256).
        lr, weight_decay: Adam settings. The reference uses 1e-2 / 1e-3 on ML-1M; on ML-100K
            that collapses to a few dozen distinct codes, so the default is 3e-3 / 1e-5
            (same test AUC, hundreds of distinct codes: see bench/results/hashing.md).
        batch_size: rows per step.
        max_epochs: upper bound on epochs.
        beta_step, beta_every: beta rises by `beta_step` every `beta_every` epochs, capped at 1.
        patience: evaluations without a better valid AUC before stopping.
        stop_only_binary: count patience only once beta has reached 1.
        ste: ``"identity"`` (reference) or ``"clipped"`` straight-through backward.
        init_std: std of the normal init of the embeddings.
        seed: seeds the init, the batch order and the mixing masks.
        balance_weight: weight of the bit-balance penalty, the mean over bits of the squared
            batch mean of each bit's tanh output (0 = off; hash model only).
        decorr_weight: weight of the decorrelation penalty, the mean squared off-diagonal entry of
            the bits' uncentred second-moment matrix ``h^T h / n`` of the tanh outputs over the batch
            (0 = off; hash model only).
        objective: what the codes are trained for. ``"bce"`` (the paper's): BCE of the score as a
            logit on the rated train pairs and their like/dislike labels, model selection by valid
            AUC; codes for prompts and pair scores. ``"bpr"`` / ``"softmax"``: implicit feedback for
            top-N lists, on the train positives against `negatives` items drawn per positive from
            the whole catalogue (BPR: ``softplus(s_neg - s_pos)``; sampled softmax: cross-entropy of
            the positive among them, with the log-q correction of the sampler), model selection by
            valid NDCG@10 of full-catalogue lists (train items excluded).
        negatives: catalogue items drawn per positive (bpr / softmax).
        neg_popularity: share of those drawn in proportion to the item's train positives (the rest
            uniform over the catalogue); 0 = uniform.
        temperature: scores (+-1 inner products, in -d..d) are divided by it before the loss.
        prior_weight: list objectives only: the exported codes get an item-popularity prior,
            ``prior_weight * log(1 + train positives)``, as extra thermometer bits (users all ones, so
            the +-1 product of the wider codes is the learned product plus the prior:
            :func:`binllm.cf.retrieval.append_prior_bits`); 0 = none; None = the weight of
            :data:`binllm.cf.retrieval.PRIOR_WEIGHTS` with the best valid NDCG@10.
    """

    model: str = "hash"
    d: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-5
    batch_size: int = 2048
    max_epochs: int = 400
    beta_step: float = 0.02
    beta_every: int = 1
    patience: int = 80
    stop_only_binary: bool = True
    ste: str = "identity"
    init_std: float = 0.1
    seed: int = 0
    balance_weight: float = 0.0
    decorr_weight: float = 0.0
    objective: str = "bce"
    negatives: int = 1
    neg_popularity: float = 0.0
    temperature: float = 1.0
    prior_weight: float | None = 0.0

    @classmethod
    def mf_baseline(cls, **overrides: Any) -> HashConfig:
        """The paper's continuous MF baseline: 256-d, Adam lr 1e-3, weight decay 1e-4,
        patience 10. `overrides` replace any field (e.g. ``max_epochs``, ``seed``)."""
        base: dict[str, Any] = dict(model="mf", d=256, lr=1e-3, weight_decay=1e-4, patience=10)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def retrieval_codes(cls, **overrides: Any) -> HashConfig:
        """The retrieval codes of ``binllm run``: a hash model trained for top-N lists (sampled softmax,
        16 catalogue negatives per positive, 64 bits), chosen by valid HR@10 in tools/lists_search.py
        (results/lists_search_broad.md). `overrides` replace any field."""
        base: dict[str, Any] = dict(objective="softmax", d=64, negatives=16, patience=20, prior_weight=None)
        base.update(overrides)
        return cls(**base)

    def __post_init__(self) -> None:
        if self.model not in ("hash", "mf"):
            raise ValueError(f"model must be 'hash' or 'mf'; got {self.model!r}")
        if self.ste not in ("identity", "clipped"):
            raise ValueError(f"ste must be 'identity' or 'clipped'; got {self.ste!r}")
        for name in ("d", "batch_size", "max_epochs", "beta_every", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if not (self.lr > 0 and self.weight_decay >= 0 and 0 < self.beta_step <= 1):
            raise ValueError("lr must be > 0, weight_decay >= 0 and 0 < beta_step <= 1")
        for name in ("balance_weight", "decorr_weight"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0; got {v!r}")
        if self.init_std <= 0:
            raise ValueError(f"init_std must be > 0; got {self.init_std}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}; got {self.objective!r}")
        if isinstance(self.negatives, bool) or not isinstance(self.negatives, int) or self.negatives < 1:
            raise ValueError(f"negatives must be an integer >= 1; got {self.negatives!r}")
        if not (isinstance(self.neg_popularity, (int, float)) and 0 <= self.neg_popularity <= 1):
            raise ValueError(f"neg_popularity must be a number in [0, 1]; got {self.neg_popularity!r}")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0; got {self.temperature!r}")

        pw = self.prior_weight
        if pw is not None and not (isinstance(pw, (int, float)) and not isinstance(pw, bool) and math.isfinite(pw)
                                   and pw >= 0):
            raise ValueError(f"prior_weight must be None (chosen on valid) or a finite number >= 0; got {pw!r}")
        if self.objective == "bce" and pw != 0:
            raise ValueError("prior_weight applies to the list objectives (bpr, softmax); objective 'bce' needs 0")

    @property
    def for_lists(self) -> bool:
        """Whether the objective trains for top-N lists (bpr, softmax) rather than pair labels."""
        return self.objective != "bce"

    def beta(self, epoch: int) -> float:
        """Probability of the binary value during (0-based) `epoch`."""
        if self.model != "hash":
            return 0.0
        return min(1.0, (epoch // self.beta_every) * self.beta_step)


def _embeddings(n_users: int, n_items: int, d: int, init_std: float) -> tuple[nn.Embedding, nn.Embedding]:
    """User and item tables, normal init, row 0 (padding) zero."""
    tables = []
    for n in (n_users, n_items):
        e = nn.Embedding(n, d, padding_idx=0)
        nn.init.normal_(e.weight, std=init_std)
        with torch.no_grad():
            e.weight[0].zero_()
        tables.append(e)
    return tables[0], tables[1]


class HashModel(nn.Module):
    """User/item MF embeddings (padding id 0) -> Linear + tanh -> sign."""

    def __init__(self, n_users: int, n_items: int, d: int, init_std: float = 0.1, ste: str = "identity"):
        super().__init__()
        self.d, self.clip = d, ste == "clipped"
        self.user_emb, self.item_emb = _embeddings(n_users, n_items, d, init_std)
        self.user_proj = nn.Linear(d, d)
        self.item_proj = nn.Linear(d, d)

    def continuous(self, side: str, ids: torch.Tensor | None = None) -> torch.Tensor:
        """tanh(W e + b) for the given ids (all rows when None)."""
        emb, proj = (self.user_emb, self.user_proj) if side == "user" else (self.item_emb, self.item_proj)
        e = emb.weight if ids is None else emb(ids)
        return torch.tanh(proj(e))

    def _mix(self, h: torch.Tensor, beta: float, gen: torch.Generator | None) -> torch.Tensor:
        if beta <= 0:
            return h
        b = sign_ste(h, self.clip)
        if beta >= 1:
            return b
        take = torch.rand(h.shape, generator=gen, device=h.device) < beta
        return torch.where(take, b, h)

    def forward(self, u: torch.Tensor, i: torch.Tensor, beta: float = 1.0,
                gen: torch.Generator | None = None) -> torch.Tensor:
        return self.pair(u, i, beta, gen)[0]

    def vectors(self, side: str, ids: torch.Tensor, beta: float = 1.0,
                gen: torch.Generator | None = None) -> torch.Tensor:
        """The mixed binary/continuous codes (ids.shape + (d,)) of ids of one side, as in training."""
        return self._mix(self.continuous(side, ids), beta, gen)

    def pair(self, u: torch.Tensor, i: torch.Tensor, beta: float = 1.0,
             gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits (n,), user tanh outputs (n, d), item tanh outputs (n, d)); the regularisers
        act on the tanh outputs, the logits on the mixed binary/continuous values."""
        cu, ci = self.continuous("user", u), self.continuous("item", i)
        hu = self._mix(cu, beta, gen)
        hi = self._mix(ci, beta, gen)
        return (hu * hi).sum(-1), cu, ci

    @torch.no_grad()
    def packed_codes(self, side: str) -> np.ndarray:
        """Packed binary codes of every id of a side: uint8 (n, ceil(d/8))."""
        return _codes.pack_signs(self.continuous(side).detach().cpu().float().numpy())

    @torch.no_grad()
    def binary_scores(self, u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """Exact +-1 inner products (float), as the forward pass with beta = 1."""
        return self.forward(u, i, beta=1.0)


class MFModel(nn.Module):
    """Continuous matrix factorisation: score = <e_u, e_i> (no biases)."""

    def __init__(self, n_users: int, n_items: int, d: int, init_std: float = 0.1):
        super().__init__()
        self.user_emb, self.item_emb = _embeddings(n_users, n_items, d, init_std)

    def forward(self, u, i, beta: float = 0.0, gen=None):  # noqa: ARG002  (HashModel's signature; MF ignores both)
        return (self.user_emb(u) * self.item_emb(i)).sum(-1)

    def vectors(self, side: str, ids: torch.Tensor, beta: float = 0.0,  # noqa: ARG002  (HashModel's signature)
                gen: torch.Generator | None = None) -> torch.Tensor:  # noqa: ARG002
        """The embeddings (ids.shape + (d,)) of ids of one side."""
        return (self.user_emb if side == "user" else self.item_emb)(ids)

    @torch.no_grad()
    def binary_scores(self, u, i):
        return self.forward(u, i)


#: The two models :func:`train` builds (one training loop, one checkpoint format).
Model = HashModel | MFModel


def build_model(cfg: HashConfig, n_users: int, n_items: int) -> Model:
    """A fresh :class:`HashModel` or :class:`MFModel` for `cfg`, initialised from ``cfg.seed``
    (``n_users`` / ``n_items`` count the slots, padding id 0 included)."""
    torch.manual_seed(cfg.seed)
    if cfg.model == "hash":
        return HashModel(n_users, n_items, cfg.d, cfg.init_std, cfg.ste)
    return MFModel(n_users, n_items, cfg.d, cfg.init_std)


# ---------------------------------------------------------------- bit usage


def code_stats(codes_packed: np.ndarray, d: int) -> dict[str, float | int]:
    """How well a set of codes uses its bits.

    Args:
        codes_packed: uint8 (n, ceil(d/8)) packed codes (MSB-first), e.g. ``model.packed_codes("item")[1:]``.
        d: code bits.
    Returns:
        ``bit_entropy``: mean over bits of the binary entropy (in bits, 0..1) of the bit's share of
        ones (1 = every bit splits the codes 50/50); ``distinct_codes``: number of different codes;
        ``n``: number of codes.
    """
    if not isinstance(codes_packed, np.ndarray) or codes_packed.dtype != np.uint8 or codes_packed.ndim != 2:
        got = f"{codes_packed.dtype} {codes_packed.shape}" if isinstance(codes_packed, np.ndarray) else type(
            codes_packed).__name__
        raise ValueError(f"codes_packed must be a 2-D uint8 array (n, ceil(d/8)); got {got}")
    n = len(codes_packed)
    if n == 0:
        return {"bit_entropy": 0.0, "distinct_codes": 0, "n": 0}
    p = _codes.balance(codes_packed, d).astype(np.float64)  # share of ones per bit; validates d
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    h = np.nan_to_num(h, nan=0.0)  # p in {0, 1}: no information
    return {"bit_entropy": float(h.mean()), "distinct_codes": _distinct_rows(codes_packed), "n": n}


def _distinct_rows(codes_packed: np.ndarray) -> int:
    """Distinct rows, each row viewed as one opaque value (~6x faster than np.unique(axis=0))."""
    c = np.ascontiguousarray(codes_packed)
    return int(len(np.unique(c.view(f"V{c.shape[1]}")))) if c.shape[1] else int(len(c) > 0)


def _regulariser(cfg: HashConfig, h: torch.Tensor) -> torch.Tensor:
    """Balance and decorrelation penalties of one side's tanh outputs h (n, d)."""
    out = h.new_zeros(())
    if cfg.balance_weight > 0:
        out = out + cfg.balance_weight * h.mean(0).pow(2).mean()
    if cfg.decorr_weight > 0 and h.shape[1] > 1:
        # uncentred second moments, as for +-1 codes (||B^T B / n - I||): a centred, normalised
        # correlation would be minimised by constant bits, the collapse this penalty is meant to stop
        m = (h.T @ h) / h.shape[0]
        off = m - torch.diag(torch.diagonal(m))
        out = out + cfg.decorr_weight * off.pow(2).sum() / (h.shape[1] * (h.shape[1] - 1))
    return out


# ---------------------------------------------------------------- list objectives

#: Model selection metric of the list objectives (a key of the per-epoch history).
SELECT_LISTS = "valid_ndcg@10"


class _ListData:
    """What a list objective (bpr / softmax) trains and selects on: the train positives, a sampler of
    catalogue negatives (uniform mixed with popularity, collisions with the user's own train
    positives drawn again once) and the valid list task (train items excluded)."""

    def __init__(self, prep: Prepared, cfg: HashConfig):
        from binllm.cf import retrieval

        tr = prep.split("train")
        liked = tr[tr["label"].to_numpy() == 1]
        if len(liked) == 0:
            raise ValueError(f"objective {cfg.objective!r} trains on train positives; the train split has none")
        self.cfg = cfg
        self.u = torch.from_numpy(liked["uid"].to_numpy().astype(np.int64))
        self.i = torch.from_numpy(liked["iid"].to_numpy().astype(np.int64))
        self.slots = prep.n_item_slots
        pop = retrieval.popularity(prep).astype(np.float64)  # catalogue index = slot - 1
        m = len(pop)
        self.pop_p = torch.from_numpy(pop / pop.sum())
        q = (1 - cfg.neg_popularity) / m + cfg.neg_popularity * pop / pop.sum()
        # log-probability of each slot - 1 under the sampler (floored: the redraw is uniform even when the
        # sampler gives an item no mass)
        self.log_q = torch.from_numpy(np.log(np.maximum(q, 1e-12))).float()
        self.keys = torch.unique(self.u * self.slots + self.i)  # sorted
        self.m = m
        self.task = retrieval.ListTask.of(prep, ("train",), "valid")
        if len(self.task.users) == 0:
            raise ValueError(f"objective {cfg.objective!r} selects its epoch by valid lists, but no user has a valid "
                             "positive that is not already rated in train; use objective 'bce'")

    def _is_positive(self, u: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        k = u[:, None] * self.slots + items
        pos = torch.searchsorted(self.keys, k).clamp(max=len(self.keys) - 1)
        return self.keys[pos] == k

    def negatives(self, u: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Item slots (len(u), negatives) drawn from the sampler."""
        shape = (len(u), self.cfg.negatives)
        neg = torch.randint(0, self.m, shape, generator=gen)
        if self.cfg.neg_popularity > 0:
            pop = torch.multinomial(self.pop_p, neg.numel(), replacement=True, generator=gen).view(shape)
            neg = torch.where(torch.rand(shape, generator=gen) < self.cfg.neg_popularity, pop, neg)
        neg = neg + 1
        hit = self._is_positive(u, neg)
        if hit.any():  # once: a few collisions left are noise the loss tolerates
            neg[hit] = torch.randint(0, self.m, (int(hit.sum()),), generator=gen) + 1
        return neg

    def loss(self, model: Model, idx: torch.Tensor, beta: float, gen: torch.Generator) -> torch.Tensor:
        u, i = self.u[idx], self.i[idx]
        neg = self.negatives(u, gen)
        hu = model.vectors("user", u, beta, gen)
        t = self.cfg.temperature
        if self.slots <= neg.numel() + len(i):
            # a catalogue smaller than the batch's item draws: every item's code once (one mixing mask per item
            # and batch), the scores against all items as one matmul, then gathered; many times cheaper than a
            # code per draw when negatives are many
            table = model.vectors("item", torch.arange(self.slots), beta, gen)
            every = hu @ table.T / t
            sp, sn = every.gather(1, i[:, None])[:, 0], every.gather(1, neg)
        else:
            hp = model.vectors("item", i, beta, gen)
            hn = model.vectors("item", neg, beta, gen)
            sp = (hu * hp).sum(-1) / t
            sn = torch.einsum("bd,bkd->bk", hu, hn) / t
        if self.cfg.objective == "bpr":
            return nn.functional.softplus(sn - sp[:, None]).mean()
        # sampled softmax with the log-q correction (sampled logits minus the log-probability of drawing them)
        logits = torch.cat([(sp - self.log_q[i - 1])[:, None], sn - self.log_q[neg - 1]], 1)
        return nn.functional.cross_entropy(logits, torch.zeros(len(u), dtype=torch.long))

    @torch.no_grad()
    def evaluate(self, model: Model, k: int = 10) -> dict[str, float]:
        """Valid HR@k and NDCG@k of full-catalogue lists (binary codes for the hash model)."""
        from binllm.cf import retrieval

        t = self.task
        model.eval()
        if isinstance(model, HashModel):
            _, idx = retrieval.retrieve_codes(model.packed_codes("user")[t.users], model.packed_codes("item")[1:],
                                              model.d, k, t.excl_offsets, t.excl_items)
        else:
            _, idx = retrieval.retrieve_dense(model.user_emb.weight[t.users].numpy(),
                                              model.item_emb.weight[1:].numpy(), k, t.excl_offsets, t.excl_items)
        hr, nd = metrics.list_metrics(idx, t.target_offsets, t.targets, k)
        return {f"valid_hr@{k}": float(hr.mean()), f"valid_ndcg@{k}": float(nd.mean())}


def export_codes(model: HashModel, prep: Prepared, cfg: HashConfig) -> tuple[np.ndarray, np.ndarray, int, dict]:
    """The packed codes a code book stores for a trained hash model: (user codes, item codes, d, info).

    Objective 'bce': the model's codes as they are (info empty). List objectives: the learned d bits
    followed by the popularity-prior bits of ``cfg.prior_weight`` (chosen on valid lists when None:
    the weight of :data:`binllm.cf.retrieval.PRIOR_WEIGHTS` with the best valid NDCG@10, ties broken by
    popularity as the lists do); info records ``learned_bits``, ``prior_weight``, ``prior_bits`` and
    the valid HR@10 / NDCG@10 of each weight tried."""
    from binllm.cf import retrieval

    uc, ic, d = model.packed_codes("user"), model.packed_codes("item"), model.d
    if not cfg.for_lists:
        return uc, ic, d, {}
    pop = retrieval.popularity(prep, ("train",))
    order = retrieval.popularity_order(pop)
    task = retrieval.ListTask.of(prep, ("train",), "valid")
    weights = retrieval.PRIOR_WEIGHTS if cfg.prior_weight is None else (float(cfg.prior_weight),)
    tried: dict[str, dict[str, float]] = {}
    best: tuple[float, float] | None = None
    for w in weights:
        levels, bits = retrieval.prior_levels(pop, w)
        u2, i2, d2 = retrieval.append_prior_bits(uc, ic, d, levels, bits)
        _, idx = retrieval.retrieve_codes(u2[task.users], i2[1:], d2, 10, task.excl_offsets, task.excl_items,
                                          tie_order=order)
        hr, nd = metrics.list_metrics(idx, task.target_offsets, task.targets, 10)
        tried[str(w)] = {"valid_hr@10": float(hr.mean()), "valid_ndcg@10": float(nd.mean()), "prior_bits": bits}
        if best is None or nd.mean() > best[1]:
            best = (w, float(nd.mean()))
    assert best is not None  # weights is never empty
    levels, bits = retrieval.prior_levels(pop, best[0])
    u2, i2, d2 = retrieval.append_prior_bits(uc, ic, d, levels, bits)
    return u2, i2, d2, {"learned_bits": d, "prior_weight": best[0], "prior_bits": bits, "prior_tried": tried}


# ---------------------------------------------------------------- training


@dataclass
class SplitTensors:
    """One split's rows as tensors: uid/iid int64 (n,), label float32 (n,), warm bool (n,) (numpy)."""

    u: torch.Tensor
    i: torch.Tensor
    y: torch.Tensor
    warm: np.ndarray

    @classmethod
    def of(cls, prep: Prepared, split: str) -> SplitTensors:
        r = prep.split(split)
        if len(r) == 0:
            raise ValueError(f"the {split} split is empty; nothing to train or evaluate on")
        return cls(torch.from_numpy(r["uid"].to_numpy().astype(np.int64)),
                   torch.from_numpy(r["iid"].to_numpy().astype(np.int64)),
                   torch.from_numpy(r["label"].to_numpy().astype(np.float32)),
                   r["not_cold"].to_numpy())


@torch.no_grad()
def predict(model: Model, s: SplitTensors, batch: int = 1 << 16) -> np.ndarray:
    """Evaluation scores (binary for the hash model) of a split's rows: float32 (n,)."""
    model.eval()
    out = [model.binary_scores(s.u[b:b + batch], s.i[b:b + batch]) for b in range(0, len(s.u), batch)]
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def evaluate(model: Model, s: SplitTensors) -> dict:
    """AUC, UAUC and their warm/cold parts (:func:`binllm.metrics.evaluate`) of a split."""
    return metrics.evaluate(s.u.numpy(), s.y.numpy().astype(np.int64), predict(model, s), s.warm)


@dataclass
class TrainResult:
    """What :func:`train` returns: the best model (by valid AUC) and the run's record."""

    model: Model
    best_epoch: int
    best_valid_auc: float
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    epochs_run: int = 0
    select: str = "valid_auc"  #: the history key that picked the best epoch
    best_valid: float = -math.inf  #: its value at the best epoch


class CheckpointExistsError(ValueError):
    """``out_dir`` already holds a checkpoint and ``resume`` was not asked for."""


@dataclass
class _LoopState:
    """The training loop's own state, saved in the checkpoint as a plain dict."""

    epoch: int = 0
    best_auc: float = -math.inf
    best_epoch: int = -1
    best_state: dict[str, torch.Tensor] | None = None
    bad: int = 0
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


CHECKPOINT = "checkpoint.pt"
_FORMAT = 2  # 1: the pickled-dict checkpoints before weights_only loading (same keys)


def _torch_save(obj: dict, path: Path) -> None:
    torch.save(obj, path)


def _load_checkpoint(path: Path) -> dict:
    """The checkpoint dict, loaded with ``weights_only=True`` (no arbitrary pickles)."""
    try:
        c = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - torch raises several types for a bad file; one clear message
        raise ValueError(f"{path} is not a readable hash-model checkpoint ({type(e).__name__}: {e}); "
                         f"delete the folder to start again") from e
    if not isinstance(c, dict) or not {"config", "model", "optimizer", "generator", "state"} <= set(c):
        raise ValueError(f"{path} is not a hash-model checkpoint (missing keys); delete the folder to start again")
    return c


def _config_of(c: dict, path: Path) -> HashConfig:
    try:
        return HashConfig(**c["config"])
    except TypeError as e:
        raise ValueError(f"{path} holds a config this binllm does not know: {e}") from e


def load_best(out_dir: str | os.PathLike) -> Model:
    """The best model (by valid AUC) of a :func:`train` run folder, in eval mode.

    Rebuilds the model from the checkpoint's config and table sizes, then loads the best state
    (the last state when no evaluation finished yet).

    Raises:
        FileNotFoundError: no ``checkpoint.pt`` in `out_dir`.
        ValueError: the file is not a readable hash-model checkpoint.
    """
    path = Path(out_dir) / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"no hash-model checkpoint at {path}; run `binllm pretrain` first")
    c = _load_checkpoint(path)
    cfg = _config_of(c, path)
    sd = c["state"].get("best_state") or c["model"]
    model = build_model(cfg, sd["user_emb.weight"].shape[0], sd["item_emb.weight"].shape[0])
    model.load_state_dict(sd)
    return model.eval()


def _check_ids(prep: Prepared, n_users: int, n_items: int) -> None:
    r = prep.rows
    for col, n, name in (("uid", n_users, "user"), ("iid", n_items, "item")):
        v = r[col].to_numpy()
        if len(v) and (v.min() < 1 or v.max() >= n):
            raise ValueError(f"{name} ids must lie in 1..{n - 1}; found {v.min()}..{v.max()}")


def make_optimizer(model: nn.Module, cfg: HashConfig) -> torch.optim.Optimizer:
    """Adam with weight decay. Dense embedding gradients make every step touch
    every table row, so the step is memory-bound: the fused kernel makes one
    pass over the parameters where the loop version makes about ten."""
    params = list(model.parameters())
    try:
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, TypeError):  # torch builds without a fused kernel for this device
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def train(prep: Prepared, cfg: HashConfig, out_dir: str | os.PathLike | None = None, resume: bool = False,
          progress: bool = True, max_epochs: int | None = None,
          on_epoch: Callable[[dict], None] | None = None, log: bool | None = None) -> TrainResult:
    """Trains on ``prep``'s train split with early stopping on valid AUC (in the ``hash`` thread stage).

    Args:
        prep: a :class:`binllm.data.Prepared` dataset.
        cfg: model and loop settings.
        out_dir: where ``checkpoint.pt`` is written after every epoch (atomic); None: no checkpoint.
        resume: continue from ``out_dir/checkpoint.pt``. Without it an existing checkpoint is an error.
        progress: draw a progress bar (on a terminal).
        max_epochs: stop after this many epochs *in this call* (to test resuming); ``cfg.max_epochs``
            bounds the whole run.
        on_epoch: called with each evaluation round's record.
        log: progress lines (the ``binllm`` logger, stderr) instead of a bar: one per tenth of
            ``cfg.max_epochs`` and the last epoch; None: exactly when `progress` is on and stderr
            is not a terminal, so a log is never silent for minutes and never flooded.
    Returns:
        the best model (by valid AUC), its epoch and the per-epoch history. Hash-model records carry
        ``item_bit_entropy`` and ``item_distinct_codes`` (:func:`code_stats`).
    Raises:
        CheckpointExistsError: `out_dir` holds a checkpoint and ``resume`` is False.
        ValueError: resuming a checkpoint written with another config; empty splits; bad ids.
        FloatingPointError: the loss became NaN/Inf; the last good checkpoint is kept.
    """
    if max_epochs is not None and max_epochs < 1:
        raise ValueError(f"max_epochs must be >= 1 or None; got {max_epochs}")
    with threads.stage("hash"):
        return _train(prep, cfg, out_dir, resume, progress, max_epochs, on_epoch, log)


def _train(prep: Prepared, cfg: HashConfig, out_dir: str | os.PathLike | None, resume: bool, progress: bool,
           max_epochs: int | None, on_epoch: Callable[[dict], None] | None, log: bool | None) -> TrainResult:
    from tqdm.auto import tqdm

    tr, va = SplitTensors.of(prep, "train"), SplitTensors.of(prep, "valid")
    n_users, n_items = prep.n_user_slots, prep.n_item_slots
    _check_ids(prep, n_users, n_items)
    model = build_model(cfg, n_users, n_items)
    opt = make_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    loss_fn = nn.BCEWithLogitsLoss()
    st = _LoopState()
    ckpt = Path(out_dir) / CHECKPOINT if out_dir is not None else None
    if ckpt is not None:
        if ckpt.exists() and not resume:
            raise CheckpointExistsError(
                f"{ckpt} exists (epoch {_epoch_of(ckpt)}); pass resume=True (--resume) to continue it, or delete "
                f"{ckpt.parent} to start again")
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        if ckpt.exists():
            c = _load_checkpoint(ckpt)
            if _config_of(c, ckpt) != cfg:
                raise ValueError(f"{ckpt} was written with another config; use a new out_dir or the same settings")
            model.load_state_dict(c["model"])
            opt.load_state_dict(c["optimizer"])
            gen.set_state(c["generator"])
            st = _LoopState(**c["state"])
    select = SELECT_LISTS if cfg.for_lists else "valid_auc"  # the history key that picks the best epoch
    bar_on = progress and sys.stderr.isatty()
    if log is None:
        log = progress and not bar_on
    log_every = max(1, cfg.max_epochs // 10)
    regularise = cfg.model == "hash" and (cfg.balance_weight > 0 or cfg.decorr_weight > 0)
    lists = _ListData(prep, cfg) if cfg.for_lists else None
    n = len(tr.u) if lists is None else len(lists.u)
    done_this_call = 0
    bar = tqdm(total=cfg.max_epochs, initial=st.epoch, desc=f"train {cfg.model}", disable=not bar_on, leave=False)
    # the patience test sits at the top so that resuming a finished run trains no further epoch
    while st.epoch < cfg.max_epochs and st.bad < cfg.patience:
        if max_epochs is not None and done_this_call >= max_epochs:
            break
        epoch, t0 = st.epoch, time.perf_counter()
        beta = cfg.beta(epoch)
        model.train()
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for b in range(0, n, cfg.batch_size):
            idx = perm[b:b + cfg.batch_size]
            if lists is not None:
                loss = lists.loss(model, idx, beta, gen)
                reg = None
                if regularise and isinstance(model, HashModel):
                    reg = (_regulariser(cfg, model.continuous("user", lists.u[idx]))
                           + _regulariser(cfg, model.continuous("item", lists.i[idx])))
            elif regularise and isinstance(model, HashModel):  # regularise implies the hash model
                logits, cu, ci = model.pair(tr.u[idx], tr.i[idx], beta, gen)
                loss = loss_fn(logits, tr.y[idx])
                reg = _regulariser(cfg, cu) + _regulariser(cfg, ci)
            else:
                logits = model(tr.u[idx], tr.i[idx], beta, gen)
                loss = loss_fn(logits, tr.y[idx])
                reg = None
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss became {loss.item()} at epoch {epoch} (lr={cfg.lr}); the last good checkpoint "
                    f"{ckpt if ckpt else '(none: no out_dir)'} is kept — lower lr or raise weight_decay")
            opt.zero_grad(set_to_none=True)
            (loss if reg is None else loss + reg).backward()
            opt.step()
            total += loss.item() * len(idx)
        res = evaluate(model, va)
        # plain Python numbers only: the checkpoint must load with weights_only=True
        rec: dict[str, float | int] = {"epoch": epoch, "beta": float(beta), "loss": float(total / n),
                                       "valid_auc": float(res["auc"]), "valid_uauc": float(res["uauc"])}
        if lists is not None:
            rec.update(lists.evaluate(model))
        if isinstance(model, HashModel):  # cfg.model == "hash"
            cs = code_stats(model.packed_codes("item")[1:], cfg.d)
            rec.update(item_bit_entropy=cs["bit_entropy"], item_distinct_codes=cs["distinct_codes"])
        rec["seconds"] = time.perf_counter() - t0
        st.seconds += rec["seconds"]
        st.history.append(rec)
        # st.best_auc holds the best value of the selection metric (its name predates the list objectives)
        if rec[select] > st.best_auc:
            st.best_auc, st.best_epoch, st.bad = rec[select], epoch, 0
            st.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif beta >= 1 or not cfg.stop_only_binary or cfg.model != "hash":
            st.bad += 1
        st.epoch = epoch + 1
        done_this_call += 1
        if ckpt is not None:
            snapshot = {"format": _FORMAT, "config": dataclasses.asdict(cfg), "model": model.state_dict(),
                        "optimizer": opt.state_dict(), "generator": gen.get_state(), "state": dataclasses.asdict(st)}
            _io.atomic_save(ckpt, functools.partial(_torch_save, snapshot))
        if on_epoch:
            on_epoch(rec)
        bar.update(1)
        bar.set_postfix(beta=f"{beta:.2f}", loss=f"{rec['loss']:.4f}", best=f"{st.best_auc:.4f}")
        last = st.epoch >= cfg.max_epochs or st.bad >= cfg.patience
        if log and (st.epoch % log_every == 0 or last):
            from binllm.progress import log as log_line

            extra = (f" bit_entropy {rec['item_bit_entropy']:.3f} codes {rec['item_distinct_codes']}"
                     if "item_bit_entropy" in rec else "")
            log_line(f"train {cfg.model}: epoch {epoch + 1}/{cfg.max_epochs} beta {beta:.2f} loss {rec['loss']:.4f} "
                     f"{select} {rec[select]:.4f} (best {st.best_auc:.4f} @ {st.best_epoch + 1}, "
                     f"{st.bad}/{cfg.patience} without gain){extra} {rec['seconds']:.2f}s")
    bar.close()
    if st.best_state is not None:
        model.load_state_dict(st.best_state)
    best_auc = st.history[st.best_epoch]["valid_auc"] if st.best_epoch >= 0 else st.best_auc
    return TrainResult(model, st.best_epoch, float(best_auc), st.history, st.seconds, st.epoch, select,
                       float(st.best_auc))


def _epoch_of(path: Path) -> str:
    """The epoch a checkpoint reached, for error messages ('?' when unreadable)."""
    try:
        return str(_load_checkpoint(path)["state"]["epoch"])
    except (ValueError, KeyError, TypeError):
        return "?"


def iter_history(out_dir: str | os.PathLike) -> Iterator[dict]:
    """The per-epoch records stored in a run folder's checkpoint."""
    yield from _load_checkpoint(Path(out_dir) / CHECKPOINT)["state"]["history"]


def config_from_json(text: str) -> HashConfig:
    """A :class:`HashConfig` from its JSON dict (as stored in code books and checkpoints)."""
    return HashConfig(**json.loads(text))
