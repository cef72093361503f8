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
