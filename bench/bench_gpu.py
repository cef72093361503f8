"""GPU benchmarks of the CUDA backend against torch on the same GPU: packing
(vs torch's compare + bit arithmetic, and vs the GPU's memory bandwidth), and
top-k (vs bf16 matmul of unpacked +-1 codes + torch.topk, best chunking).
Checks agreement first. Writes bench/results/gpu.md (or $OUT/gpu.md).

    python bench/bench_gpu.py [--quick]
"""
from __future__ import annotations

import argparse
import functools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import binllm  # noqa: E402

import common  # noqa: E402
from common import environment, write_table  # noqa: E402


def cuda_time(fn, repeats=7):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    times.sort()
    return {"median": times[len(times) // 2], "min": times[0], "max": times[-1], "n": repeats}


def torch_pack(x):
    bits = (x >= 0).view(x.shape[0], -1, 8).to(torch.uint8)
    w = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=x.device)
    return (bits * w).sum(-1, dtype=torch.uint8)


def torch_topk(q, it, d, k, chunk):
    uq = binllm.unpack_signs(q, d, "bfloat16")
    ui = binllm.unpack_signs(it, d, "bfloat16")
    vals, idx = [], []
    for c in range(0, uq.shape[0], chunk):
        s = uq[c:c + chunk] @ ui.T
        v, i = torch.topk(s, k, dim=1)
        vals.append(v)
        idx.append(i)
    return torch.cat(vals).int(), torch.cat(idx)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    dev = torch.device("cuda", 0)
    rows = []
    n = 1_000_000 if args.quick else 10_000_000
    for d in (64, 256):
        x = torch.randn(n, d, device=dev)
        ours = binllm.pack_signs(x)
        assert torch.equal(ours, torch_pack(x))
        assert torch.equal(ours[:1000].cpu(), binllm.pack_signs(x[:1000].cpu()))
        gb = x.numel() * 4 / 1e9
        t_copy = cuda_time(x.clone)
        t_o = cuda_time(functools.partial(binllm.pack_signs, x))
        t_t = cuda_time(functools.partial(torch_pack, x))
        copy_bw = 2 * gb / t_copy["median"]
        rows.append({"section": "pack", "d": d, "impl": "binllm pack_signs (CUDA)", "median_s": t_o["median"],
                     "rate": gb / t_o["median"], "unit": "GB/s read",
                     "note": f"n={n:,}; {100 * gb / t_o['median'] / 4800:.0f}% of 4.8 TB/s peak"})
        rows.append({"section": "pack", "d": d, "impl": "torch (x>=0) * weights sum", "median_s": t_t["median"],
                     "rate": gb / t_t["median"], "unit": "GB/s read", "binllm_x": t_t["median"] / t_o["median"]})
        rows.append({"section": "pack", "d": d, "impl": "torch clone (read+write bandwidth)",
                     "median_s": t_copy["median"], "rate": copy_bw, "unit": "GB/s read+write"})
        del x
    nq, m, k, d = (1000, 100_000, 10, 64) if args.quick else (10_000, 1_000_000, 10, 64)
    g = torch.Generator(device=dev).manual_seed(0)
    q = binllm.pack_signs(torch.randn(nq, d, device=dev, generator=g))
    it = binllm.pack_signs(torch.randn(m, d, device=dev, generator=g))
    s, i = binllm.topk(q, it, d, k)
    cs, _ = binllm.topk(q[:50].cpu(), it.cpu(), d, k)
    assert torch.equal(s[:50].cpu(), cs)
    t_o = cuda_time(lambda: binllm.topk(q, it, d, k), 3)
    rows.append({"section": "top-k", "d": d, "impl": f"binllm topk (CUDA) k={k}", "median_s": t_o["median"],
                 "rate": nq * m / t_o["median"] / 1e9, "unit": "1e9 pairs/s", "note": f"{nq:,} x {m:,}"})
    for chunk in (256, 1024, 4096):
        ts, _ = torch_topk(q[:chunk], it, d, k, chunk)
        assert torch.equal(ts, s[:chunk])
        t = cuda_time(lambda: torch_topk(q, it, d, k, chunk), 3)
        rows.append({"section": "top-k", "d": d, "impl": f"torch bf16 matmul + topk, chunk {chunk}",
                     "median_s": t["median"], "rate": nq * m / t["median"] / 1e9, "unit": "1e9 pairs/s",
                     "binllm_x": t["median"] / t_o["median"]})
    out_dir = os.environ.get("OUT")
    if out_dir:
        common.RESULTS = common.Path(out_dir)
    write_table("gpu_quick" if args.quick else "gpu", rows,
                ["section", "d", "impl", "median_s", "rate", "unit", "binllm_x", "note"], environment(),
                f"GPU: {torch.cuda.get_device_name(0)}. Times by CUDA events, median of 3-7 runs after a warm-up.")


if __name__ == "__main__":
    main()
