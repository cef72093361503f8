"""The text-like encoding ("hash") model: collaborative filtering with binary codes.

MF embeddings -> per-side ``Linear(d, d)`` + ``tanh`` -> ``sign`` with a
straight-through backward; the score is the +-1 inner product of a user and an
item code, trained as a logit with BCE. During training each element uses the
binary value with probability ``beta`` (else the tanh value); ``beta`` rises
by ``beta_step`` every ``beta_every`` epochs and then stays at 1, so the model
ends fully binary. Evaluation is always binary. A continuous MF baseline (the
paper's 256-d MF row) trains in the same loop.

The loop (:func:`train`) is whole-tensor: each epoch draws a permutation and
slices index batches from tensors, no DataLoader and no per-row Python. Every
evaluation writes an atomic checkpoint (config, model, optimizer, epoch, beta,
RNG state, best state); ``resume=True`` continues an interrupted run to the
same result as an uninterrupted one on the CPU.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from . import codes as _codes
from . import metrics


class SignSTE(torch.autograd.Function):
    """sign(x) in {-1, +1} (x >= 0 -> +1) with a straight-through gradient.

    Backward passes the output gradient unchanged (``clip=False``, the
    reference) or only where |x| <= 1 (``clip=True``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, clip: bool = False) -> torch.Tensor:  # type: ignore[override]
        ctx.clip = clip
        if clip:
            ctx.save_for_backward(x)
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        if ctx.clip:
            (x,) = ctx.saved_tensors
            return grad * (x.abs() <= 1).to(grad.dtype), None
        return grad, None


def sign_ste(x: torch.Tensor, clip: bool = False) -> torch.Tensor:
    """Straight-through sign: forward ``x >= 0 -> +1 else -1``; see :class:`SignSTE`."""
    return SignSTE.apply(x, clip)


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
        hu = self._mix(self.continuous("user", u), beta, gen)
        hi = self._mix(self.continuous("item", i), beta, gen)
        return (hu * hi).sum(-1)

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

    def forward(self, u, i, beta: float = 0.0, gen=None):
        return (self.user_emb(u) * self.item_emb(i)).sum(-1)

    @torch.no_grad()
    def binary_scores(self, u, i):
        return self.forward(u, i)


def build_model(cfg: HashConfig, n_users: int, n_items: int) -> nn.Module:
    torch.manual_seed(cfg.seed)
    if cfg.model == "hash":
        return HashModel(n_users, n_items, cfg.d, cfg.init_std, cfg.ste)
    return MFModel(n_users, n_items, cfg.d, cfg.init_std)


# ---------------------------------------------------------------- training


@dataclass
class SplitTensors:
    u: torch.Tensor
    i: torch.Tensor
    y: torch.Tensor
    warm: np.ndarray

    @classmethod
    def of(cls, prep: Any, split: str) -> "SplitTensors":
        r = prep.split(split)
        if len(r) == 0:
            raise ValueError(f"the {split} split is empty; nothing to train or evaluate on")
        return cls(torch.from_numpy(r["uid"].to_numpy().astype(np.int64)),
                   torch.from_numpy(r["iid"].to_numpy().astype(np.int64)),
                   torch.from_numpy(r["label"].to_numpy().astype(np.float32)),
                   r["not_cold"].to_numpy())


@torch.no_grad()
def predict(model: nn.Module, s: SplitTensors, batch: int = 1 << 16) -> np.ndarray:
    """Evaluation scores (binary for the hash model) of a split's rows."""
    model.eval()
    out = [model.binary_scores(s.u[b:b + batch], s.i[b:b + batch]) for b in range(0, len(s.u), batch)]
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def evaluate(model: nn.Module, s: SplitTensors) -> dict:
    return metrics.evaluate(s.u.numpy(), s.y.numpy().astype(np.int64), predict(model, s), s.warm)


@dataclass
class TrainResult:
    model: nn.Module
    best_epoch: int
    best_valid_auc: float
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    epochs_run: int = 0


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _check_ids(prep: Any, n_users: int, n_items: int) -> None:
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


def train(prep: Any, cfg: HashConfig, out_dir: str | os.PathLike | None = None, resume: bool = False,
          progress: bool = True, max_epochs: int | None = None,
          on_epoch: Callable[[dict], None] | None = None) -> TrainResult:
    """Trains on ``prep``'s train split with early stopping on valid AUC.

    Args:
        prep: a :class:`binllm.data.Prepared` dataset.
        cfg: model and loop settings.
        out_dir: where ``checkpoint.pt`` is written after every epoch (atomic).
        resume: continue from ``out_dir/checkpoint.pt`` if it exists.
        max_epochs: stop after this many epochs in this call (to test resuming).
    Returns:
        the best model (by valid AUC), its epoch and the per-epoch history.
    Raises:
        FloatingPointError: the loss became NaN/Inf; the last good checkpoint is kept.
    """
    from tqdm.auto import tqdm

    tr, va = SplitTensors.of(prep, "train"), SplitTensors.of(prep, "valid")
    n_users, n_items = prep.n_user_slots, prep.n_item_slots
    _check_ids(prep, n_users, n_items)
    model = build_model(cfg, n_users, n_items)
    opt = make_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    loss_fn = nn.BCEWithLogitsLoss()
    state = {"epoch": 0, "best_auc": -math.inf, "best_epoch": -1, "best_state": None, "bad": 0, "history": [],
             "seconds": 0.0}
    ckpt = Path(out_dir) / "checkpoint.pt" if out_dir is not None else None
    if ckpt is not None:
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        if resume and ckpt.exists():
            c = torch.load(ckpt, weights_only=False)
            if c["config"] != dataclasses.asdict(cfg):
                raise ValueError(f"{ckpt} was written with another config; use a new out_dir or the same settings")
            model.load_state_dict(c["model"])
            opt.load_state_dict(c["optimizer"])
            gen.set_state(c["generator"])
            state = c["state"]
    n = len(tr.u)
    done_this_call = 0
    bar = tqdm(total=cfg.max_epochs, initial=state["epoch"], desc=f"train {cfg.model}", disable=None if progress else True,
               leave=False)
    while state["epoch"] < cfg.max_epochs:
        if max_epochs is not None and done_this_call >= max_epochs:
            break
        epoch, t0 = state["epoch"], time.perf_counter()
        beta = cfg.beta(epoch)
        model.train()
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for b in range(0, n, cfg.batch_size):
            idx = perm[b:b + cfg.batch_size]
            logits = model(tr.u[idx], tr.i[idx], beta, gen)
            loss = loss_fn(logits, tr.y[idx])
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss became {loss.item()} at epoch {epoch} (lr={cfg.lr}); the last good checkpoint "
                    f"{ckpt if ckpt else '(none: no out_dir)'} is kept — lower lr or raise weight_decay")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        res = evaluate(model, va)
        state["seconds"] += time.perf_counter() - t0
        rec = {"epoch": epoch, "beta": beta, "loss": total / n, "valid_auc": res["auc"], "valid_uauc": res["uauc"],
               "seconds": time.perf_counter() - t0}
        state["history"].append(rec)
        if res["auc"] > state["best_auc"]:
            state.update(best_auc=res["auc"], best_epoch=epoch, best_state=copy.deepcopy(model.state_dict()), bad=0)
        elif beta >= 1 or not cfg.stop_only_binary or cfg.model != "hash":
            state["bad"] += 1
        state["epoch"] = epoch + 1
        done_this_call += 1
        if ckpt is not None:
            _atomic_save({"config": dataclasses.asdict(cfg), "model": model.state_dict(),
                          "optimizer": opt.state_dict(), "generator": gen.get_state(), "state": state}, ckpt)
        if on_epoch:
            on_epoch(rec)
        bar.update(1)
        bar.set_postfix(beta=f"{beta:.2f}", loss=f"{rec['loss']:.4f}", auc=f"{res['auc']:.4f}")
        if state["bad"] >= cfg.patience:
            break
    bar.close()
    if state["best_state"] is not None:
        model.load_state_dict(state["best_state"])
    return TrainResult(model, state["best_epoch"], state["best_auc"], state["history"], state["seconds"],
                       state["epoch"])


def config_from_json(text: str) -> HashConfig:
    return HashConfig(**json.loads(text))
