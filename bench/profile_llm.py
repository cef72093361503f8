"""Where the LLM stages spend their time: the torch profiler's operator table for one LoRA training
step and one scoring forward of the default model (SmolLM2-135M, float32 on CPU), written to
bench/results/llm_profile.md with the machine it ran on. It is the "profile first" step of the speed
work: the share of matmul (mm/addmm/bmm) bounds what any change outside the matmuls can win.

    python bench/profile_llm.py [--threads 2] [--batch 8] [--seq 160]

The batch is random token ids of one length (no padding), the shapes `binllm tune` / `score` run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from binllm._io import atomic_write_text  # noqa: E402
from binllm.bench import machine  # noqa: E402
from binllm.llm import scoring, tuning  # noqa: E402

from common import RESULTS, environment  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=160)
    ap.add_argument("--rows", type=int, default=18, help="operators listed per table")
    a = ap.parse_args()
    from peft import get_peft_model
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(a.threads)
    model, tok = scoring.load_llm("smollm2", device="cpu", dtype="float32")
    pm = get_peft_model(model, tuning.lora_config(tuning.TuneConfig()))
    tuning.use_shard_dropout(pm)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 40000, (a.batch, a.seq), generator=g)
    mask = torch.ones_like(ids)
    pos = torch.arange(a.seq).expand(a.batch, a.seq)

    def step() -> None:
        pm.train()
        lg = scoring.last_logits(pm, ids, mask, pos).float()
        lg[:, 100].sum().backward()

    def forward() -> None:
        pm.eval()
        with torch.inference_mode():
            scoring.last_logits(pm, ids, mask, pos)

    env = environment()
    isa = ", ".join(f for f in machine.cpu_flags() if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16"))
    parts = [f"# LLM profile: SmolLM2-135M float32, {a.batch} x {a.seq} tokens, {a.threads} threads",
             "", f"CPU: {machine.cpu_model()} ({isa}); torch {torch.__version__}. Self CPU time over two calls "
             "after one warm-up; LoRA r/alpha/targets as TuneConfig's defaults.", ""]
    for name, fn in (("LoRA training step (forward + backward)", step), ("scoring forward", forward)):
        fn()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
            fn()
        avg = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in avg)
        mm = sum(e.self_cpu_time_total for e in avg if e.key in ("aten::mm", "aten::addmm", "aten::bmm"))
        parts += [f"## {name}", "", f"matmul (aten::mm/addmm/bmm) share of self CPU time: {mm / total:.1%}", "",
                  "```", avg.table(sort_by="self_cpu_time_total", row_limit=a.rows, max_name_column_width=40),
                  "```", ""]
    parts += ["machine: " + ", ".join(f"{k}={v}" for k, v in env.items() if k in ("cpu", "threads", "date", "binllm"))]
    out = RESULTS / "llm_profile.md"
    atomic_write_text(out, "\n".join(parts) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
