"""binllm.kernels.torch_ops against what it replaces, in one run:

1. A hash-model training step (user/item embeddings -> Linear -> tanh -> straight-through
   sign -> +-1 dot -> BCE-with-logits -> fused Adam; batch 2048, d = 32 and 64, beta = 1,
   the fully binary regime most epochs run in) with three straight-through signs:
   ``SignSTE`` (binllm.cf.hashing's autograd.Function, used today), the detach trick
   ``h + (sign(h) - h).detach()``, and the ``binllm::sign_ste`` custom op; each in eager
   mode and under ``torch.compile(fullgraph=True)`` (inductor; forward + loss compiled,
   backward through AOT autograd, optimizer step eager).
2. Per-call overhead of the custom ops against the direct calls: ``binllm.pack_signs`` vs
   ``binllm.kernels.torch_ops.pack_signs`` vs ``torch.ops.binllm.pack_signs.default``, small and
   large inputs, and ``dot_all`` on a small input.

All variants are first checked to agree (same losses and gradients eager; compiled
within float tolerance). Writes bench/results/torch_ops.md/.csv (``--quick``:
torch_ops_quick.*, d = 32 only, fewer steps, 1 thread).

    python bench/bench_torch_ops.py [--quick] [--threads N]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
import binllm  # noqa: E402
import binllm.kernels.torch_ops as ops  # noqa: E402
from binllm.cf import hashing  # noqa: E402

from common import environment, timeit, write_table  # noqa: E402

N_USERS, N_ITEMS, BATCH = 944, 1683, 2048  # ML-100K-sized tables


def ste_detach(h: torch.Tensor) -> torch.Tensor:
    """The common one-liner STE: forward sign (x >= 0 -> +1), backward identity."""
    s = torch.where(h >= 0, torch.ones_like(h), -torch.ones_like(h))
    return h + (s - h).detach()


STES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "SignSTE (today)": hashing.sign_ste,
    "detach trick": ste_detach,
    "binllm::sign_ste op": ops.sign_ste,
}


class HashStep(nn.Module):
    """The hash model's forward and loss at beta = 1 with a pluggable STE."""

    def __init__(self, d: int, ste: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        torch.manual_seed(0)
        self.user_emb, self.item_emb = nn.Embedding(N_USERS, d), nn.Embedding(N_ITEMS, d)
        nn.init.normal_(self.user_emb.weight, std=0.1)
        nn.init.normal_(self.item_emb.weight, std=0.1)
        self.user_proj, self.item_proj = nn.Linear(d, d), nn.Linear(d, d)
        self.ste = ste

    def forward(self, u: torch.Tensor, i: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        bu = self.ste(torch.tanh(self.user_proj(self.user_emb(u))))
        bi = self.ste(torch.tanh(self.item_proj(self.item_emb(i))))
        return F.binary_cross_entropy_with_logits((bu * bi).sum(-1), y)


def make_batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randint(1, N_USERS, (BATCH,), generator=g), torch.randint(1, N_ITEMS, (BATCH,), generator=g),
             torch.randint(0, 2, (BATCH,), generator=g).float()) for _ in range(n)]


def trainer(d: int, ste_name: str, compiled: bool) -> Callable[[list], list[float]]:
    """A function running training steps over a list of batches; returns the losses."""
    model = HashStep(d, STES[ste_name])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-5, fused=True)
    loss_fn = torch.compile(model, fullgraph=True) if compiled else model

    def run(batches: list) -> list[float]:
        losses = []
        for u, i, y in batches:
            loss = loss_fn(u, i, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        return [float(v) for v in losses]

    return run


def check_and_time_training(d: int, steps: int, repeats: int, rows: list[dict]) -> None:
    batches = make_batches(steps)
    check = batches[:3]
    reference: list[float] | None = None
    base_ms = None
    for compiled in (False, True):
        for name in STES:
            run = trainer(d, name, compiled)
            t = time.perf_counter()
            losses = run(check)  # the first call compiles
            first_s = time.perf_counter() - t
            if reference is None:
                reference = losses
            # the detach trick's forward is h + (s - h), which can be an ulp off +-1; compiled code
            # may reorder float sums: a tolerance, not equality
            assert all(abs(a - b) <= 1e-4 * max(1.0, abs(b)) for a, b in zip(losses, reference)), (
                f"{'compiled' if compiled else 'eager'} {name}: losses {losses} vs eager SignSTE {reference}")
            r = timeit(lambda run=run: run(batches), repeats=repeats, warmup=1)
            ms = r["median"] / steps * 1e3
            if base_ms is None:
                base_ms = ms
            rows.append({"bench": "train step", "d": d, "variant": ("compiled " if compiled else "eager ") + name,
                         "ms": ms, "min_ms": r["min"] / steps * 1e3, "max_ms": r["max"] / steps * 1e3,
                         "vs_today": base_ms / ms, "first_call_s": first_s if compiled else "",
                         "repeats": r["n"]})
            print(rows[-1], flush=True)


def time_call_overhead(quick: bool, rows: list[dict]) -> None:
    g = torch.Generator().manual_seed(2)
    sizes = [(64, 32), (2048, 32), (200_000 if quick else 1_000_000, 64)]
    for n, d in sizes:
        x = torch.randn(n, d, generator=g)
        calls = {"binllm.pack_signs (direct)": lambda x=x: binllm.pack_signs(x),
                 "torch_ops.pack_signs": lambda x=x: ops.pack_signs(x),
                 "torch.ops.binllm.pack_signs.default": lambda x=x: torch.ops.binllm.pack_signs.default(x)}
        want = binllm.pack_signs(x)
        for f in calls.values():
            assert torch.equal(f(), want)
        _overhead_rows(f"pack_signs {n}x{d}", d, calls, max(3, 2_000_000 // (n * d)), rows)
    c = binllm.pack_signs(torch.randn(64, 32, generator=g))
    calls = {"binllm.dot_all (direct)": lambda: binllm.dot_all(c, c, 32),
             "torch_ops.dot_all": lambda: ops.dot_all(c, c, 32)}
    assert torch.equal(calls["torch_ops.dot_all"](), calls["binllm.dot_all (direct)"]())
    _overhead_rows("dot_all 64x64 d=32", 32, calls, 2000, rows)


def _overhead_rows(bench: str, d: int, calls: dict[str, Callable[[], object]], inner: int, rows: list[dict]) -> None:
    base = None
    for name, f in calls.items():
        def loop(f: Callable[[], object] = f) -> None:
            for _ in range(inner):
                f()
        r = timeit(loop, repeats=7, warmup=1)
        us = r["median"] / inner * 1e6
        base = base or us
        rows.append({"bench": bench, "d": d, "variant": name, "ms": us / 1e3, "min_ms": r["min"] / inner * 1e3,
                     "max_ms": r["max"] / inner * 1e3, "vs_today": base / us, "repeats": r["n"]})
        print(rows[-1], flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="d = 32 only, fewer steps and repeats")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's own; 1 with --quick, since on a shared machine "
                         "two OpenMP threads spinning for two busy cores made steps 20x slower)")
    args = ap.parse_args()
    threads = args.threads or (1 if args.quick else None)
    if threads:
        torch.set_num_threads(threads)
    rows: list[dict] = []
    time_call_overhead(args.quick, rows)
    for d in (32,) if args.quick else (32, 64):
        check_and_time_training(d, steps=10 if args.quick else 50, repeats=3 if args.quick else 7, rows=rows)
    env = environment()
    env["torch_threads"] = torch.get_num_threads()
    notes = (
        "Train step: ms per step (median of repeats over a fixed list of batches), vs_today = SignSTE eager / this. "
        "first_call_s: the compiled variants' first 3 steps, which include the compilation. "
        "Overhead rows: ms per call, vs_today = direct call / this. "
        + f"torch threads: {torch.get_num_threads()}. "
        + ("QUICK run (d = 32 only, 10 steps x 3 repeats): the machine was shared, numbers are indicative only."
           if args.quick else "")
    )
    name = "torch_ops_quick" if args.quick else "torch_ops"
    path = write_table(name, rows, ["bench", "d", "variant", "ms", "min_ms", "max_ms", "vs_today", "first_call_s",
                                    "repeats"], env, notes)
    print(path.read_text().split("Machine facts")[0])


if __name__ == "__main__":
    main()
