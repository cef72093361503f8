"""The ``binllm`` command line: one sub-command a stage of the pipeline.

Heavy modules (torch, pandas, transformers) are imported inside the command
that needs them, so ``binllm doctor`` answers instantly.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Callable, Sequence

_COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]] = {}


def command(name: str, help: str):
    def wrap(fn):
        _COMMANDS[name] = (fn.configure, fn, help)
        return fn

    return wrap


def _configure(fn: Callable[[argparse.ArgumentParser], None]):
    def deco(run):
        run.configure = fn
        return run

    return deco


# ---------------------------------------------------------------- doctor


@command("doctor", "print version, compiler, CPU variants and CUDA availability")
@_configure(lambda p: p.add_argument("--json", action="store_true", help="print as JSON"))
def _doctor(args: argparse.Namespace) -> int:
    import binllm

    info = binllm.build_info()
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda_available"] = bool(torch.cuda.is_available())
    except ImportError:
        info["torch"] = None
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:24s} {v}")
    return 0


# ---------------------------------------------------------------- demo


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--items", type=int, default=200_000)
    p.add_argument("--d", type=int, default=32)
    p.add_argument("--k", type=int, default=10)


@command("demo", "a short tour of the code kernels on random embeddings")
@_configure(_demo_args)
def _demo(args: argparse.Namespace) -> int:
    import numpy as np

    import binllm

    rng = np.random.default_rng(0)
    u = rng.standard_normal((args.users, args.d), dtype=np.float32)
    it = rng.standard_normal((args.items, args.d), dtype=np.float32)
    t = time.perf_counter()
    cu, ci = binllm.pack_signs(u), binllm.pack_signs(it)
    print(f"packed {args.users + args.items:,} x {args.d} floats in {time.perf_counter() - t:.3f}s")
    print("user 0 as bits:   ", binllm.to_bits(cu[:1], args.d)[0])
    print("user 0 as dotted: ", binllm.to_dotted(cu[:1], args.d)[0])
    t = time.perf_counter()
    s, i = binllm.topk(cu[:10_000], ci, args.d, args.k)
    dt = time.perf_counter() - t
    print(f"top-{args.k} of {args.items:,} items for 10,000 users in {dt:.3f}s "
          f"({10_000 * args.items / dt / 1e9:.2f}e9 pairs/s, variant {binllm.build_info()['cpu_variant']})")
    print("user 0 best items:", i[0].tolist(), "scores:", s[0].tolist())
    return 0


# ---------------------------------------------------------------- prepare


def _prepare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", default="ml-100k", choices=["ml-100k", "ml-1m", "amazon-book", "table", "reference"],
                   help="ml-100k is the embedded default (recbole's package data)")
    p.add_argument("--path", help="ML-1M folder or zip; Amazon reviews .json(.gz); a CSV/Parquet; a folder of pickles")
    p.add_argument("--meta", help="Amazon metadata .json(.gz)")
    p.add_argument("--protocol", help="ml-100k, ml-1m or amazon-book (default: the source's)")
    p.add_argument("--columns", help="for --source table: user,item,rating,timestamp[,title] column names")
    p.add_argument("--history-len", type=int, default=20)
    p.add_argument("--out", default="runs/data", help="output folder (written atomically)")


@command("prepare", "read a dataset, apply the BinLLM protocol, write the prepared format")
@_configure(_prepare_args)
def _prepare(args: argparse.Namespace) -> int:
    import dataclasses

    from . import data

    if args.source == "reference":
        if not args.path:
            raise SystemExit("--source reference needs --path (the folder of train/valid/test pickles)")
        prep = data.read_reference_pickles(args.path)
    else:
        kw = {}
        if args.source == "table":
            if not args.columns:
                raise SystemExit("--source table needs --columns user,item,rating,timestamp[,title]")
            names = args.columns.split(",")
            kw = dict(zip(["user", "item", "rating", "timestamp", "title"], names))
        ratings = data.load_source(args.source, args.path, args.meta, **kw)
        proto = args.protocol or (args.source if args.source in data.PROTOCOLS else "ml-100k")
        if proto not in data.PROTOCOLS:
            raise SystemExit(f"--protocol must be one of {sorted(data.PROTOCOLS)}")
        p = dataclasses.replace(data.PROTOCOLS[proto], history_len=args.history_len)
        prep = data.prepare(ratings, p)
    prep.save(args.out)
    print(prep.summary())
    print(f"wrote {args.out}")
    return 0


# ---------------------------------------------------------------- pretrain / encode


def _pretrain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="runs/data", help="prepared dataset folder (binllm prepare)")
    p.add_argument("--out", default="runs/hash", help="output folder: checkpoint, code book, metrics")
    p.add_argument("--mf", action="store_true", help="also train the continuous MF baseline")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument("--d", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=1e-5)
    p.add_argument("--beta-step", type=float, default=0.02)
    p.add_argument("--max-epochs", type=int, default=400)
    p.add_argument("--patience", type=int, default=80)
    p.add_argument("--mf-d", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)


def pretrain(data_dir: str, out: str, cfg, mf_cfg=None, resume: bool = False, progress: bool = True) -> dict:
    """Trains the hash model (and optionally MF), writes the code book and metrics; returns the metrics."""
    import dataclasses
    from pathlib import Path

    import numpy as np

    import binllm

    from . import data, hashing
    from .codebook import CodeBook

    prep = data.load_prepared(data_dir)
    out_p = Path(out)
    results = {}
    te = hashing.SplitTensors.of(prep, "test")
    for name, c in (("hash", cfg), ("mf", mf_cfg)):
        if c is None:
            continue
        res = hashing.train(prep, c, out_p / name, resume=resume, progress=progress)
        m = hashing.evaluate(res.model, te)
        m.update(best_epoch=res.best_epoch, epochs=res.epochs_run, valid_auc=res.best_valid_auc,
                 seconds=res.seconds, seconds_per_epoch=res.seconds / max(res.epochs_run, 1))
        if name == "hash":
            cb = CodeBook.from_model(res.model, prep, dataclasses.asdict(c), m)
            cb.save(out_p / "codebook.safetensors")
            bal = binllm.balance(cb.item_codes[1:], c.d)
            m["item_bit_balance"] = [round(float(x), 3) for x in bal]
            m["user_bit_balance"] = [round(float(x), 3) for x in binllm.balance(cb.user_codes[1:], c.d)]
            m["distinct_user_codes"] = int(len(np.unique(cb.user_codes[1:], axis=0)))
            m["distinct_item_codes"] = int(len(np.unique(cb.item_codes[1:], axis=0)))
        results[name] = m
    _write_json(out_p / "metrics.json", results)
    return results


def _write_json(path, obj) -> None:
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=float))
    os.replace(tmp, path)


@command("pretrain", "train the hash model (and the MF baseline with --mf); write the code book")
@_configure(_pretrain_args)
def _pretrain(args: argparse.Namespace) -> int:
    from . import metrics
    from .hashing import HashConfig

    cfg = HashConfig(d=args.d, lr=args.lr, weight_decay=args.weight_decay, beta_step=args.beta_step,
                     max_epochs=args.max_epochs, patience=args.patience, seed=args.seed)
    mf = HashConfig(model="mf", d=args.mf_d, lr=1e-3, weight_decay=1e-4, max_epochs=args.max_epochs,
                    patience=10, seed=args.seed) if args.mf else None
    res = pretrain(args.data, args.out, cfg, mf, resume=args.resume)
    print(metrics.table({("BinMF (hash codes)" if k == "hash" else "MF"): v for k, v in res.items()}))
    h = res["hash"]
    print(f"hash: best epoch {h['best_epoch']} of {h['epochs']}, {h['seconds_per_epoch']:.3f} s/epoch, "
          f"{h['distinct_user_codes']} distinct user codes, {h['distinct_item_codes']} item codes; wrote {args.out}")
    return 0


def _encode_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--codebook", default="runs/hash/codebook.safetensors")
    p.add_argument("--style", choices=["dotted", "bits"], default="dotted")
    p.add_argument("--out", default="runs/hash/codes.tsv", help="TSV: side, slot, raw id, code")


@command("encode", "write every user's and item's code string (bits or dotted) to a TSV file")
@_configure(_encode_args)
def _encode(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from tqdm.auto import tqdm

    from .codebook import CodeBook

    cb = CodeBook.load(args.codebook)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("side\tslot\tid\tcode\n")
        for side, ids in (("user", cb.user_ids), ("item", cb.item_ids)):
            strings = cb.strings(side, args.style)
            for slot in tqdm(range(1, len(ids)), desc=f"{side} codes", leave=False):
                f.write(f"{side}\t{slot}\t{ids[slot]}\t{strings[slot]}\n")
                n += 1
    os.replace(tmp, out)
    print(f"wrote {n} {args.style} codes (d={cb.d}) to {out}")
    return 0


# ---------------------------------------------------------------- run


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/ml100k", help="output folder; re-running resumes")
    p.add_argument("--model", default="smollm2", help="'smollm2' (embedded default) or a local HF model folder")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--full", action="store_true", help="all rows and the paper's step settings (for a GPU)")
    p.add_argument("--ablations", action="store_true", help="also codes-only, intuitive and bit-string rows")
    p.add_argument("--train-rows", type=int)
    p.add_argument("--valid-rows", type=int)
    p.add_argument("--test-rows", type=int)
    p.add_argument("--step1-steps", type=int)
    p.add_argument("--step2-steps", type=int)
    p.add_argument("--step1-lr", type=float)
    p.add_argument("--step2-lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--eval-steps", type=int)
    p.add_argument("--max-titles", type=int)
    p.add_argument("--code-style", choices=["dotted", "bits"])
    p.add_argument("--seed", type=int)


@command("run", "the main job: prepare, hash model + MF, two-step LoRA tuning, evaluation (resumable)")
@_configure(_run_args)
def _run(args: argparse.Namespace) -> int:
    from .pipeline import RunConfig, run

    keys = ["out", "model", "device", "dtype", "ablations", "train_rows", "valid_rows", "test_rows", "step1_steps",
            "step2_steps", "step1_lr", "step2_lr", "batch_size", "eval_steps", "max_titles", "code_style", "seed"]
    kw = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    cfg = RunConfig.full(**kw) if args.full else RunConfig(**kw)
    run(cfg)
    print(f"results: {cfg.out}/results.md")
    return 0


# ---------------------------------------------------------------- entry


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="binllm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (configure, _, help) in _COMMANDS.items():
        configure(sub.add_parser(name, help=help, description=help))
    args = parser.parse_args(argv)
    try:
        return _COMMANDS[args.command][1](args)
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
