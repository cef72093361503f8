"""The stages of the main job as library functions: prepare, pretrain, tune, score, evaluate.

Each stage reads and writes one documented place, writes atomically, is skipped
when its finished outputs exist, and resumes when it was interrupted. The
command line (``binllm prepare | pretrain | tune | score | evaluate``) and the
composition :func:`binllm.run.pipeline.run` are thin layers over these functions.

Layout of a run folder (``binllm run --out RUN``; each stage can also be run on
its own with any of these paths)::

    RUN/run_config.json           the RunConfig of the last call
    RUN/data/                     prepared dataset (binllm prepare): rows.parquet, items, users, meta.json
    RUN/hash/                     hash model + MF baseline (binllm pretrain)
        codebook.safetensors      packed user/item codes, id maps, config, metrics, checksum
        metrics.json              full-test metrics of both models, code statistics
        hash/checkpoint.pt, mf/checkpoint.pt   resumable training state (private to binllm.cf.hashing)
    RUN/samples.json              row numbers of the train / valid / test samples (fixed by the seed)
    RUN/llm/<name>/adapter/       a tuned LoRA adapter (binllm tune) + binllm.json (configs, history)
    RUN/llm/<name>/checkpoints/   Trainer checkpoints, removed once the adapter is final
    RUN/scores/<name>.npz         scores of one method (binllm score): rows, scores, meta
    RUN/results.{md,json,png}     the metrics table with intervals (binllm evaluate)

A score file is a numpy ``.npz`` with ``rows`` (int64 row numbers of the
prepared dataset), ``scores`` (float32) and ``meta`` (a JSON string: method,
split, model, adapter, and under ``settings`` what the scores were computed
from); it never holds pickled objects.

Each stage holds the lock of its output for its whole run (:mod:`binllm.locks`):
a second process on the same output is refused at once. A finished output is
reused only when the settings it records (source and files, configs, prompt,
model, code book checksum, adapter, data fingerprint) equal the ones asked for;
otherwise the stage refuses with one line naming what differs.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from binllm import locks, metrics
from binllm._io import atomic_save, atomic_write_json, atomic_write_text, sha256_file
from binllm.progress import log

if TYPE_CHECKING:  # heavy imports only for type checkers
    from binllm.cf.codebook import CodeBook
    from binllm.cf.hashing import HashConfig
    from binllm.data import Prepared
    from binllm.llm.prompts import PromptConfig
    from binllm.llm.tuning import TuneConfig

SCORE_METHODS = ("llm", "binmf", "mf", "popularity")
SAMPLE_SPLITS = ("train", "valid_small", "valid", "test")


class StageError(ValueError):
    """A stage cannot run as asked (missing input, mismatched outputs); the message says what to do."""


# ---------------------------------------------------------------------------- helpers


def _same(a: object, b: object) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def _plain(x: object) -> object:
    return json.loads(json.dumps(x, sort_keys=True, default=str))


def _differences(old: Mapping, new: Mapping, legacy_ok: bool = True) -> list[str]:
    """``key: old -> new`` for every setting of `new` that `old` records otherwise (one level of
    nested dicts spelled ``prompt.kind``). With `legacy_ok`, keys `old` lacks (written by an older
    binllm) are not compared."""
    out = []
    for k, v in new.items():
        if k not in old:
            if not legacy_ok:
                out.append(f"{k}: (not recorded) -> {_short(v)}")
            continue
        a, b = _plain(old[k]), _plain(v)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{k}.{s}: {_short(a.get(s))} -> {_short(b.get(s))}" for s in sorted(set(a) | set(b))
                    if a.get(s) != b.get(s)]
        else:
            out.append(f"{k}: {_short(a)} -> {_short(b)}")
    return out


def _short(v: object) -> str:
    text = repr(v)
    if isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v):
        text = repr(v[:12] + "...")  # a sha256: its start tells them apart
    return text if len(text) <= 60 else text[:57] + "..."


def _refuse(out: Path, holds: str, diffs: list[str], how: str) -> StageError:
    shown = ", ".join(diffs[:4]) + (f" and {len(diffs) - 4} more" if len(diffs) > 4 else "")
    return StageError(f"{out} holds {holds} made with other settings ({shown}); {how}")


def _data_fingerprint(data_dir: str | os.PathLike) -> str | None:
    from binllm.data.prepared import read_fingerprint

    return read_fingerprint(data_dir)


def _adapter_fingerprint(adapter: str | os.PathLike | None) -> str | None:
    """sha256 of an adapter's weights file (None without an adapter or weights)."""
    if adapter is None:
        return None
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if (Path(adapter) / name).is_file():
            return sha256_file(Path(adapter) / name)
    return None


def _model_id(model: str | os.PathLike) -> str:
    """How a model is recorded and compared: the embedded name, or the folder as given ('./m' = 'm')."""
    return os.path.normpath(str(model)) if str(model) != "smollm2" else "smollm2"


def sample_rows(prep: Prepared, split: str, n: int | None, seed: int = 0) -> np.ndarray:
    """Row numbers of a uniform sample of `n` rows of `split` (all rows when n is None
    or larger), sorted. The same (dataset, split, n, seed) always gives the same rows,
    whatever other samples were drawn, so every stage and machine agrees on them."""
    if split not in SAMPLE_SPLITS:
        raise ValueError(f"split must be one of {SAMPLE_SPLITS}; got {split!r}")
    if n is not None and n < 1:
        raise ValueError(f"the sample size of {split} must be >= 1 or None (all rows); got {n}")
    rows = np.flatnonzero(prep.mask(split))
    if n is None or n >= len(rows):
        return rows
    rng = np.random.default_rng([seed, zlib.crc32(split.encode())])
    return np.sort(rng.choice(rows, size=n, replace=False))


def _dist() -> tuple[int, int]:
    """(rank, world size) of a torchrun / accelerate launch; (0, 1) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


# ---------------------------------------------------------------------------- prepare


SOURCES = ("ml-100k", "ml-1m", "amazon-book", "table", "reference")


def check_source(source: str, path: str | os.PathLike | None = None, meta: str | os.PathLike | None = None,
                 protocol: str | None = None, columns: str | None = None) -> None:
    """Checks what :func:`prepare` is asked to read before anything is read or written: a known
    source, its path (and Amazon's metadata file) present, columns for 'table', a known protocol.

    Raises:
        StageError: naming the argument and what was expected.
        FileNotFoundError: a path that does not exist, or ML-100K without recbole's package data.
    """
    from binllm import data

    if source not in SOURCES:
        raise StageError(f"source must be one of {', '.join(SOURCES)}; got {source!r}")
    if source == "ml-100k" and path is None:
        data.ml100k_dir()  # raises with the pip line when recbole's data is missing
    if source != "ml-100k" and not path:
        raise StageError(f"source {source!r} needs a path (--path): "
                         + {"ml-1m": "the ML-1M folder or zip", "amazon-book": "the reviews .json(.gz)",
                            "table": "the CSV or Parquet file",
                            "reference": "the folder of train/valid/test pickles"}[source])
    if source == "amazon-book" and not meta:
        raise StageError("source 'amazon-book' needs meta (--meta): the metadata .json(.gz)")
    if source == "table":
        if not columns:
            raise StageError("source 'table' needs columns: user,item,rating,timestamp[,title]")
        data.parse_columns(columns)
    if source != "reference":
        name = protocol or data.default_protocol(source)
        if name not in data.PROTOCOLS:
            raise StageError(f"protocol must be one of {sorted(data.PROTOCOLS)}; got {name!r}")
    for what, p in (("path", path), ("meta", meta)):
        if p and not Path(p).exists():
            raise FileNotFoundError(f"{what} {p} does not exist (source {source!r})")


def _prepare_request(source: str, path: str | os.PathLike | None, meta: str | os.PathLike | None,
                     protocol: str | None, columns: str | None, history_len: int | None,
                     missing_titles: str | None) -> dict:
    """What a prepared folder records of the call that made it (meta.json "prepare"), as compared on reuse."""
    from binllm import data

    name = "reference" if source == "reference" else (protocol or data.default_protocol(source))
    return {"source": source, "path": str(Path(path).resolve()) if path else None,
            "meta": str(Path(meta).resolve()) if meta else None, "protocol": name,
            "columns": data.parse_columns(columns) if columns else None,
            "history_len": history_len if history_len is not None else (
                data.PROTOCOLS[name].history_len if name in data.PROTOCOLS else None),
            "missing_titles": missing_titles or "error"}


def _check_prepared_reuse(out: Path, want: dict) -> None:
    """Refuses to reuse a prepared folder made from another source, path, protocol or files."""
    from binllm.data.prepared import file_hash

    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    how = "use another --out, or --overwrite to prepare it again"
    old = meta.get("prepare")
    if isinstance(old, dict):
        diffs = _differences(old, want)
    else:  # written before the call was recorded: what meta.json always held
        legacy = {"ml-100k": "ml-100k", "ml-1m": "ml-1m", "amazon-book": "amazon", "reference": "reference-pickles",
                  "table": Path(want["path"] or "").stem}
        diffs = [f"source: {meta.get('source')!r} -> {want['source']!r}"] if meta.get(
            "source") != legacy[want["source"]] else []
        if meta.get("protocol_name") and meta.get("protocol_name") != want["protocol"]:
            diffs.append(f"protocol: {meta.get('protocol_name')!r} -> {want['protocol']!r}")
    if diffs:
        raise _refuse(out, "a dataset", diffs, how)
    for f, recorded in (meta.get("files") or {}).items():
        now = file_hash(f)
        if recorded and now is not None and now != recorded:
            raise StageError(f"{out} was prepared from {f}, which has changed since (its sha256 differs); {how}")


@locks.holding("out")
def prepare(out: str | os.PathLike, source: str = "ml-100k", path: str | None = None, meta: str | None = None,
            protocol: str | None = None, columns: str | None = None, history_len: int | None = None,
            missing_titles: str | None = None, trust_pickles: bool = False, progress: bool = True,
            overwrite: bool = False) -> Prepared:
    """Reads a dataset, applies its protocol and writes the prepared folder `out`.

    Skipped (the folder is loaded) when `out` already holds a dataset prepared from the same
    source, path, files (their sha256), columns and protocol; one made otherwise is an error
    unless `overwrite`, which prepares it again (atomically).
    `source`: 'ml-100k' (embedded), 'ml-1m', 'amazon-book', 'table' (CSV/Parquet
    with `columns`), 'reference' (the reference pickles; needs trust_pickles)."""
    from binllm import data

    check_source(source, path, meta, protocol, columns)
    out_p = Path(out)
    want = _prepare_request(source, path, meta, protocol, columns, history_len, missing_titles)
    if (out_p / "meta.json").is_file() and not overwrite:
        _check_prepared_reuse(out_p, want)
        prep = data.load_prepared(out_p)
        if progress:
            log(f"prepare: {out_p} holds this dataset, skipped")
        return prep
    if source == "reference":
        assert path is not None  # check_source
        prep = data.read_reference_pickles(path, trust_pickles=trust_pickles)
    else:
        kw: dict[str, str] = data.parse_columns(columns) if source == "table" and columns else {}
        if missing_titles is not None:
            kw["missing_titles"] = missing_titles
        ratings = data.load_source(source, path, meta, **kw)
        p = data.PROTOCOLS[want["protocol"]]
        if history_len is not None:
            p = dataclasses.replace(p, history_len=history_len)
        prep = data.prepare(ratings, p)
    prep.meta["prepare"] = want
    prep.save(out_p)
    if progress:
        log(f"prepare: wrote {out_p}\n{prep.summary()}")
    return prep


# ---------------------------------------------------------------------------- pretrain


#: The models of a pretrain folder: its sub-folder (checkpoint) and the code book it writes (None: MF).
PRETRAIN_MODELS = {"hash": "codebook.safetensors", "mf": None, "retrieval": "retrieval_codebook.safetensors"}


def _normal_config(c: object, where: Path) -> dict | None:
    """A stored HashConfig dict with today's defaults filled in (None stays None), so folders written
    before a field existed compare equal to the same settings now."""
    from binllm.cf.hashing import HashConfig

    if c is None:
        return None
    try:
        return dataclasses.asdict(HashConfig(**c))  # type: ignore[arg-type]
    except (TypeError, ValueError) as e:
        raise StageError(f"{where} records a hash-model config this binllm does not know ({e}); use another --out"
                         ) from None


@locks.holding("out")
def pretrain(data_dir: str | os.PathLike, out: str | os.PathLike, cfg: HashConfig,
             mf_cfg: HashConfig | None = None, resume: bool = True, progress: bool = True,
             retrieval_cfg: HashConfig | None = None) -> dict:
    """Trains the hash model (the prompt code book), and the MF baseline and the retrieval codes when
    `mf_cfg` / `retrieval_cfg` are given, on a prepared dataset; writes ``out/codebook.safetensors``,
    ``out/retrieval_codebook.safetensors`` and ``out/metrics.json``.

    The retrieval codes are a second hash model, usually wider and trained for top-N lists
    (``retrieval_cfg.objective`` 'bpr' or 'softmax'); list retrieval uses them, prompts keep the
    first code book (results/lists_search_broad.md: list objectives lower the pair AUC the prompts need).

    A model recorded in ``metrics.json`` with the same config is skipped; one recorded with another
    config is an error (finished results are never silently replaced); a model asked for but not yet
    recorded is trained and added (so an older folder gains its retrieval codes). The prepared
    dataset is fingerprinted too: another dataset is refused. Each code book's checksum is recorded and
    compared, so a code book replaced behind metrics.json's back is refused. An interrupted run
    resumes from its checkpoints when `resume` (else hashing refuses to overwrite them). Returns the
    metrics dict (per model: full-test metrics, under ``configs`` the settings)."""
    from binllm import data, threads
    from binllm.cf import hashing
    from binllm.cf.codebook import CodeBook

    out_p = Path(out)
    asked = {"hash": cfg, "mf": mf_cfg, "retrieval": retrieval_cfg}
    if retrieval_cfg is not None and not retrieval_cfg.model == "hash":
        raise StageError("retrieval_cfg must configure a hash model (model='hash'): retrieval needs binary codes")
    mfile = out_p / "metrics.json"
    fingerprint = _data_fingerprint(data_dir)
    results: dict = json.loads(mfile.read_text()) if mfile.is_file() else {}
    done_cfgs = results.get("configs") or {}
    if results.get("data") and fingerprint and results["data"] != fingerprint:
        raise _refuse(out_p, "hash models", ["data: another prepared dataset"],
                      "use another --out or delete the folder")
    todo = []
    for name, c in asked.items():
        if c is None:
            continue
        want, old = dataclasses.asdict(c), _normal_config(done_cfgs.get(name), mfile)
        book = PRETRAIN_MODELS[name]
        finished = results.get(name) is not None and (book is None or (out_p / book).is_file())
        if old is not None and finished:
            diffs = _differences(old, want, legacy_ok=False)
            if diffs:
                raise _refuse(out_p, f"a {name} model", diffs, "use another --out or delete the folder")
            if book is not None:
                _check_codebook_matches(out_p, book, results, name)
        if not finished:
            todo.append(name)
    if not todo:
        if progress:
            log(f"pretrain: {out_p} is finished, skipped")
        return results
    prep = data.load_prepared(data_dir)
    results.setdefault("configs", {})
    results["data"] = fingerprint
    with threads.stage("hash"):
        te = hashing.SplitTensors.of(prep, "test")
        for name in todo:
            c = asked[name]
            assert c is not None  # todo holds asked models only
            if progress:
                what = {"hash": "hash model (prompt codes)", "mf": "MF baseline",
                        "retrieval": "retrieval codes"}[name]
                log(f"pretrain: train the {what} (objective {c.objective}, d={c.d}, lr={c.lr}, "
                    f"wd={c.weight_decay}, at most {c.max_epochs} epochs)")
            res = hashing.train(prep, c, out_p / name, resume=resume, progress=progress)
            if res.best_epoch < 0:  # no epoch had a defined valid AUC: no model was ever selected
                raise StageError(f"pretrain: the {name} model's valid AUC was undefined in every epoch (a valid "
                                 f"split with one label?); check the prepared dataset {data_dir}")
            m = hashing.evaluate(res.model, te)
            m.update(best_epoch=res.best_epoch, epochs=res.epochs_run, valid_auc=res.best_valid_auc,
                     seconds=res.seconds, seconds_per_epoch=res.seconds / max(res.epochs_run, 1),
                     select=res.select, best_valid=res.best_valid)
            if res.best_epoch >= 0:
                m.update({k: v for k, v in res.history[res.best_epoch].items() if k.startswith("valid_")})
            book = PRETRAIN_MODELS[name]
            if book is not None and isinstance(res.model, hashing.HashModel):
                uc, ic, d_out, info = hashing.export_codes(res.model, prep, c)
                m.update(info)
                cb = CodeBook(uc, ic, d_out, prep.user_ids, prep.item_ids, {**dataclasses.asdict(c), **info}, m)
                for side in ("user", "item"):
                    codes = res.model.packed_codes(side)[1:]  # the learned bits (without prior bits)
                    for k, v in hashing.code_stats(codes, c.d).items():
                        m[f"{side}_{k}"] = v
                cb.metrics = m
                cb.save(out_p / book)
                results.setdefault("checksums", {})[book] = cb.checksum
                if name == "hash":
                    results["codebook_checksum"] = cb.checksum  # the key binllm 0.2 folders have
            results[name] = m
            results["configs"][name] = dataclasses.asdict(c)
            atomic_write_json(mfile, results)  # after each model: an interruption keeps the finished ones
    return results


def _check_codebook_matches(out: Path, book: str, done: dict, name: str) -> None:
    """A finished pretrain folder's code book `book` must be the one its metrics.json describes."""
    from binllm.cf.codebook import CodeBook

    f = out / book
    if not f.is_file():
        raise StageError(f"{out} has metrics.json but no {book}; delete the folder and pretrain again")
    cb = CodeBook.load(f)
    cfg = (done.get("configs") or {}).get(name) or {}
    recorded = (done.get("checksums") or {}).get(book) or (done.get("codebook_checksum") if name == "hash" else None)
    want_d = cfg.get("d", cb.d) + (cb.config.get("prior_bits", 0) if cfg.get("objective", "bce") != "bce" else 0)
    if cb.d != want_d or (recorded and recorded != cb.checksum):
        raise StageError(f"{out}: {book} (d={cb.d}) is not the code book metrics.json describes "
                         f"(d={cfg.get('d')}); delete the folder and pretrain again")


# ---------------------------------------------------------------------------- tune


def _prompt_sets(prep: Prepared, cb: CodeBook | None, pc: PromptConfig, tok: object,
                 splits: dict[str, np.ndarray], max_length: int) -> dict:
    """Tokenized prompts (with labels and users) of row-number samples."""
    from binllm.llm import scoring, tuning
    from binllm.llm.prompts import PromptBuilder

    builder = PromptBuilder(pc, prep.titles, cb if pc.uses_codes else None)
    res = {}
    for split, r in splits.items():
        sub = prep.rows.iloc[r]
        hist = prep.history(r, pc.max_titles)
        u, i = sub["uid"].to_numpy(), sub["iid"].to_numpy()

        def build(pos: np.ndarray, caps: np.ndarray, u: np.ndarray = u, i: np.ndarray = i,
                  hist: list = hist) -> list[str]:
            return builder.build(u[pos], i[pos], [hist[p] for p in pos], caps)

        ids, _ = scoring.fit_prompts(tok, build, len(r), pc.max_titles, max_length)
        res[split] = tuning.PromptSet(ids, sub["label"].to_numpy(), u.astype(np.int64))
    return res


def _load_codebook(path: str | os.PathLike | None, prep: Prepared, needed: bool) -> CodeBook | None:
    from binllm.cf.codebook import CodeBook

    if path is None:
        if needed:
            raise StageError("these prompts have code fields: give the code book (--codebook)")
        return None
    cb = CodeBook.load(path)
    cb.check_dataset(prep)
    return cb


def _tune_settings(data_dir: str | os.PathLike, prompt: PromptConfig, cfg: TuneConfig,
                   codebook: str | os.PathLike | None, model: str, init_adapter: str | os.PathLike | None,
                   train_rows: int | None, valid_rows: int | None, seed: int, max_length: int) -> dict:
    """What an adapter (and its checkpoints) is tuned from, as recorded and compared on reuse."""
    from binllm.cf.codebook import CodeBook

    return {"prompt": dataclasses.asdict(prompt), "tune_config": dataclasses.asdict(cfg), "model": _model_id(model),
            "data": _data_fingerprint(data_dir),
            "codebook_checksum": CodeBook.load(codebook).checksum if codebook is not None else None,
            "init_adapter": _adapter_fingerprint(init_adapter), "train_rows": train_rows, "valid_rows": valid_rows,
            "seed": seed, "max_length": max_length}


CHECKPOINT_SETTINGS = "binllm-settings.json"


def _check_tune_reuse(out: Path, settings: dict) -> bool:
    """True when `out` holds a final adapter of these settings; raises when it holds an adapter or
    Trainer checkpoints of other settings (resuming those would mix two trainings)."""
    how = "use another --out, or delete it to tune again"
    info_file = out / "adapter" / "binllm.json"
    if info_file.is_file():
        info = json.loads(info_file.read_text())
        old = info.get("meta", {}).get("settings")
        if old is None:  # an adapter of an older binllm: what its binllm.json always held
            old = {"prompt": info.get("meta", {}).get("prompt"), "tune_config": info.get("tune_config"),
                   "max_length": info.get("meta", {}).get("max_length"), "seed": info.get("meta", {}).get("seed")}
        diffs = _differences(old, settings)
        if diffs:
            raise _refuse(out, "an adapter", diffs, how)
        return True
    ckpt = out / "checkpoints"
    if ckpt.is_dir() and any(p.name.startswith("checkpoint-") for p in ckpt.iterdir()):
        f = ckpt / CHECKPOINT_SETTINGS
        if not f.is_file():
            raise StageError(f"{ckpt} holds Trainer checkpoints without recorded settings (an older binllm); "
                             "delete that folder to tune again")
        diffs = _differences(json.loads(f.read_text()), settings, legacy_ok=False)
        if diffs:
            raise _refuse(ckpt, "Trainer checkpoints", diffs,
                          f"rerun with the same settings to resume, or delete {ckpt} to start again")
    return False


@locks.holding("out")
def tune(data_dir: str | os.PathLike, out: str | os.PathLike, prompt: PromptConfig, cfg: TuneConfig,
         codebook: str | os.PathLike | None = None, model: str = "smollm2", device: str = "auto",
         dtype: str = "auto", init_adapter: str | os.PathLike | None = None, train_rows: int | None = None,
         valid_rows: int | None = None, seed: int = 0, max_length: int = 1024, progress: bool = True) -> Path:
    """One LoRA tuning step: prompts of `prompt` kind on a sample of train rows,
    model selection on a sample of valid_small rows; writes ``out/adapter``.

    Skipped when ``out/adapter/binllm.json`` exists (the adapter is final) and records
    these settings (prompt, TuneConfig, model, data, code book checksum, init adapter,
    samples, max_length); resumes from the last Trainer checkpoint in
    ``out/checkpoints`` when those were made with these settings. Other settings
    are an error naming what differs. For two-step
    tuning, give the first step's adapter as `init_adapter`. Under ``torchrun`` /
    ``accelerate launch`` every process runs this function and the Trainer does
    DDP (or FSDP / DeepSpeed from the accelerate config); rank 0 writes."""
    from binllm import data, threads
    from binllm.llm import scoring, tuning

    out_p = Path(out)
    info_file = out_p / "adapter" / "binllm.json"
    if init_adapter is not None and not (Path(init_adapter) / "adapter_config.json").is_file():
        raise StageError(f"init_adapter {init_adapter} is not a LoRA adapter folder (no adapter_config.json)")
    if init_adapter is not None:
        try:
            tuning.check_init_adapter(init_adapter, cfg)  # before the model loads: a wrong shape fails at once
        except ValueError as e:
            raise StageError(str(e)) from None
    settings = _tune_settings(data_dir, prompt, cfg, codebook, model, init_adapter, train_rows, valid_rows, seed,
                              max_length)
    if _check_tune_reuse(out_p, settings):
        if progress:
            log(f"tune: {out_p / 'adapter'} is final, skipped")
        return out_p / "adapter"
    rank, _ = _dist()
    if rank == 0:  # beside the checkpoints, so a resume can tell they were made with these settings
        atomic_write_json(out_p / "checkpoints" / CHECKPOINT_SETTINGS, settings)
    prep = data.load_prepared(data_dir)
    cb = _load_codebook(codebook, prep, prompt.uses_codes)
    dev = scoring.resolve_device(device)
    use_cuda = dev.startswith("cuda")
    import torch

    bf16 = scoring.resolve_dtype(dtype, dev) == torch.bfloat16
    with threads.stage("llm"):
        # On a CPU the weights stay float32 and the Trainer's bf16 autocast does the matmuls (where AMX makes
        # that fast): LoRA updates accumulate in float32. On a GPU the weights load in the compute dtype.
        base, tok = scoring.load_llm(model, dtype=dtype if use_cuda else "float32", device=dev, progress=progress,
                                     attn_implementation=scoring.training_attention(dev))
        samples = {"train": sample_rows(prep, "train", train_rows, seed),
                   "valid": sample_rows(prep, "valid_small", valid_rows, seed)}
        sets = _prompt_sets(prep, cb, prompt, tok, samples, max_length)
        meta = {"prompt": dataclasses.asdict(prompt), "model": str(model), "data": str(data_dir),
                "codebook": str(codebook) if codebook else None,
                "codebook_fingerprint": cb.fingerprint if cb is not None else None,
                "train_rows": len(samples["train"]), "valid_rows": len(samples["valid"]),
                "max_length": max_length, "seed": seed,
                "mean_prompt_tokens": float(np.mean([len(x) for x in sets["train"].ids])), "settings": settings}
        if progress:
            log(f"tune: {cfg.max_steps} steps at lr {cfg.lr}, batch {cfg.batch_size}, "
                f"{len(samples['train'])} train / {len(samples['valid'])} valid prompts "
                f"(~{meta['mean_prompt_tokens']:.0f} tokens)" + (f", from {init_adapter}" if init_adapter else ""))
        meta["bf16"] = bf16
        res = tuning.tune(base, tok, sets["train"], sets["valid"], cfg, out_p, init_adapter=init_adapter, meta=meta,
                          progress=progress, use_cpu=not use_cuda, bf16=bf16)
    if rank == 0 and (out_p / "checkpoints").is_dir() and info_file.is_file():
        shutil.rmtree(out_p / "checkpoints", ignore_errors=True)  # the adapter is final; checkpoints only resume
    return res.adapter_dir


# ---------------------------------------------------------------------------- score


def read_scores(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict]:
    """(rows, scores, meta) of a score file written by :func:`score`."""
    import zipfile

    p = Path(path)
    if not p.is_file():
        raise StageError(f"score file not found: {p}")
    if not zipfile.is_zipfile(p):  # numpy would try it as a pickle and advise loading it "unsafely"
        raise StageError(f"{p} is not a binllm score file (not a numpy .npz archive)")
    try:
        with np.load(p, allow_pickle=False) as z:
            rows, scores, meta = z["rows"], z["scores"], json.loads(str(z["meta"]))
    except KeyError as e:
        raise StageError(f"{p} is not a binllm score file (no {e} array)") from None
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "pickle" in first:  # an object array: numpy's message advises allow_pickle, never to be followed
            first = "it holds an object (pickled) array"
        raise StageError(f"{p} is not a binllm score file ({first})") from None
    if not isinstance(meta, dict):
        raise StageError(f"{p} is not a binllm score file (its meta is not a JSON object)")
    if rows.ndim != 1 or rows.shape != scores.shape:
        raise StageError(f"{p}: rows and scores must be 1-D arrays of one length")
    return rows.astype(np.int64), scores.astype(np.float32), meta


def write_scores(path: str | os.PathLike, rows: np.ndarray, scores: np.ndarray, meta: dict) -> Path:
    """Writes a score file atomically (see :func:`read_scores`)."""
    p = Path(path)
    if p.suffix != ".npz":
        raise StageError(f"a score file must end in .npz; got {p}")

    def writer(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, rows=np.asarray(rows, np.int64), scores=np.asarray(scores, np.float32),
                     meta=np.array(json.dumps(meta, default=str)))

    atomic_save(p, writer)
    return p


def baseline_scores(prep: Prepared, method: str, rows: np.ndarray, codebook: str | os.PathLike | None = None,
                    hash_dir: str | os.PathLike | None = None) -> np.ndarray:
    """Scores of a non-LLM method on row numbers: 'binmf' (the code book's +-1
    inner products), 'mf' (the MF baseline's best state, from `hash_dir`) or
    'popularity' (each item's smoothed positive rate in train)."""
    r = prep.rows.iloc[rows]
    u, i = r["uid"].to_numpy(), r["iid"].to_numpy()
    if method == "binmf":
        cb = _load_codebook(codebook, prep, True)
        assert cb is not None
        return cb.scores(u, i).astype(np.float32)
    if method == "mf":
        if hash_dir is None:
            raise StageError("method 'mf' needs the pretrain folder (--hash-dir) with the MF baseline")
        import torch

        from binllm.cf import hashing

        mf_dir = Path(hash_dir) / "mf"
        if not (mf_dir / "checkpoint.pt").is_file():
            raise StageError(f"{hash_dir} has no MF baseline (mf/checkpoint.pt); run pretrain with --mf")
        model = hashing.load_best(mf_dir)
        with torch.no_grad():
            return model.binary_scores(torch.from_numpy(u.astype(np.int64)),
                                       torch.from_numpy(i.astype(np.int64))).numpy().astype(np.float32)
    if method == "popularity":
        tr = prep.split("train")
        return metrics.item_positive_rate_scores(tr["iid"].to_numpy(), tr["label"].to_numpy(),
                                                 prep.n_item_slots)[i].astype(np.float32)
    raise StageError(f"method must be one of {SCORE_METHODS}; got {method!r}")


def _score_settings(prep: Prepared, data_dir: str | os.PathLike, method: str, split: str, rows: int | None,
                    seed: int, model: str, adapter: str | os.PathLike | None, codebook: str | os.PathLike | None,
                    hash_dir: str | os.PathLike | None, prompt: PromptConfig | None, max_length: int) -> dict:
    """What a score file is computed from (its meta "settings"), as compared on reuse: the method,
    the sample, the data fingerprint and per method the code book checksum, the MF checkpoint's
    sha256, or the model, adapter weights' sha256, prompt and max_length."""
    from binllm.cf.codebook import CodeBook

    out: dict[str, object] = {"method": method, "split": split, "rows": rows, "seed": seed,
                              "data": _data_fingerprint(data_dir)}
    if method == "llm":
        pc, codebook, model, max_length, _ = _llm_inputs(prep, adapter, codebook, model, prompt, max_length)
        out.update(model=_model_id(model), adapter=_adapter_fingerprint(adapter), prompt=dataclasses.asdict(pc),
                   max_length=max_length)
        if not pc.uses_codes:
            codebook = None
    if method in ("llm", "binmf"):
        out["codebook_checksum"] = CodeBook.load(codebook).checksum if codebook is not None else None
    if method == "mf" and hash_dir is not None and (Path(hash_dir) / "mf" / "checkpoint.pt").is_file():
        out["mf_checkpoint"] = sha256_file(Path(hash_dir) / "mf" / "checkpoint.pt")
    return out


def _check_score_reuse(out: Path, r: np.ndarray, want: dict) -> np.ndarray:
    """The scores in `out` when they are of these rows and settings; raises otherwise."""
    done_rows, done, meta = read_scores(out)
    how = "use another --out, or --overwrite to score again"
    # files of an older binllm record no settings: their method (and adapter path) is what they say
    old = meta.get("settings") or {"method": meta.get("method")}
    diffs = _differences(old, want)
    if diffs:
        what = "scores of another method" if "method" in {d.split(":")[0] for d in diffs} else "scores"
        raise _refuse(out, what, diffs, how)
    if not np.array_equal(done_rows, r):
        raise StageError(f"{out} holds scores of other rows; {how}")
    return done


@locks.holding("out")
def score(data_dir: str | os.PathLike, out: str | os.PathLike, method: str = "llm", split: str = "test",
          rows: int | None = None, seed: int = 0, model: str = "smollm2", adapter: str | os.PathLike | None = None,
          codebook: str | os.PathLike | None = None, hash_dir: str | os.PathLike | None = None,
          prompt: PromptConfig | None = None, device: str = "auto", dtype: str = "auto", batch_size: int = 16,
          max_length: int = 1024, progress: bool = True, overwrite: bool = False) -> np.ndarray | None:
    """Scores a split (or a sample of `rows` rows of it) and writes the score file `out`.

    `method` 'llm' scores Yes/No prompts with `model` (+ `adapter`: its prompt
    settings and code book are read from the adapter's binllm.json; without an
    adapter `prompt` gives them, zero-shot); 'binmf', 'mf', 'popularity' see
    :func:`baseline_scores`. Skipped when `out` holds scores of the same rows and
    settings (see :func:`_score_settings`; other ones are an error unless
    `overwrite`, which scores again). Under
    ``torchrun`` each rank scores an interleaved share of the rows and rank 0
    gathers and writes; returns the scores on rank 0 and None elsewhere."""
    from binllm import data

    if method not in SCORE_METHODS:
        raise StageError(f"method must be one of {SCORE_METHODS}; got {method!r}")
    if batch_size < 1:
        raise StageError(f"batch_size must be >= 1; got {batch_size}")
    out_p = Path(out)
    prep = data.load_prepared(data_dir)
    r = sample_rows(prep, split, rows, seed)
    rank, world = _dist()
    settings = _score_settings(prep, data_dir, method, split, rows, seed, model, adapter, codebook, hash_dir, prompt,
                               max_length)
    if out_p.is_file() and not overwrite:
        done = _check_score_reuse(out_p, r, settings)
        if progress and rank == 0:
            log(f"score: {out_p} holds these {len(r)} scores, skipped")
        return done if rank == 0 else None
    meta: dict[str, object] = {"method": method, "split": split, "rows": rows, "seed": seed, "data": str(data_dir),
                               "settings": settings}
    if method != "llm":
        s = baseline_scores(prep, method, r, codebook, hash_dir)
        meta.update(codebook=str(codebook) if codebook else None, hash_dir=str(hash_dir) if hash_dir else None)
        if rank == 0:
            write_scores(out_p, r, s, meta)
            if progress:
                log(f"score: wrote {len(r)} {method} scores to {out_p}")
        return s if rank == 0 else None
    s_all = _score_llm(prep, r, model, adapter, codebook, prompt, device, dtype, batch_size, max_length, progress,
                       meta)
    if s_all is None:
        return None
    write_scores(out_p, r, s_all, meta)
    if progress:
        log(f"score: wrote {len(r)} scores to {out_p}")
    return s_all


def _llm_inputs(prep: Prepared, adapter: str | os.PathLike | None, codebook: str | os.PathLike | None, model: str,
                prompt: PromptConfig | None, max_length: int
                ) -> tuple[PromptConfig, str | os.PathLike | None, str, int, str | None]:
    """(prompt config, code book, model, max_length, the code book's dataset fingerprint the adapter
    wants) of LLM scoring: an adapter's binllm.json fills in what the call leaves at its default."""
    from binllm.llm import scoring
    from binllm.llm.prompts import PromptConfig

    if adapter is None:
        return (prompt if prompt is not None else PromptConfig(kind="text", domain=prep.domain)), codebook, model, \
            max_length, None
    info_file = Path(adapter) / "binllm.json"
    if not info_file.is_file():
        raise StageError(f"adapter {adapter} has no binllm.json: not an adapter written by binllm tune")
    info = json.loads(info_file.read_text())["meta"]
    pc = PromptConfig(**info["prompt"]) if prompt is None else prompt
    if codebook is None and info.get("codebook"):
        codebook = info["codebook"]
    if model == scoring.DEFAULT_MODEL and info.get("model"):
        model = info["model"]
    return pc, codebook, model, int(info.get("max_length", max_length)), info.get("codebook_fingerprint")


def _score_llm(prep: Prepared, r: np.ndarray, model: str, adapter: str | os.PathLike | None,
               codebook: str | os.PathLike | None, prompt: PromptConfig | None, device: str, dtype: str,
               batch_size: int, max_length: int, progress: bool, meta: dict) -> np.ndarray | None:
    from binllm import threads
    from binllm.llm import scoring

    rank, world = _dist()
    pc, codebook, model, max_length, want_fingerprint = _llm_inputs(prep, adapter, codebook, model, prompt, max_length)
    cb = _load_codebook(codebook, prep, pc.uses_codes)
    if cb is not None and want_fingerprint and want_fingerprint != cb.fingerprint:
        raise StageError(f"code book {codebook} is not the one adapter {adapter} was tuned with")
    meta.update(model=str(model), adapter=str(adapter) if adapter else None, prompt=dataclasses.asdict(pc),
                codebook=str(codebook) if codebook else None)
    dev = scoring.resolve_device(device)
    if world > 1 and dev.startswith("cuda"):
        import torch

        dev = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(dev)
    mine = np.arange(rank, len(r), world)  # interleaved shares: equal prompt lengths on every rank
    with threads.stage("llm"):
        lm, tok = scoring.load_llm(model, dtype=dtype, device=dev, progress=progress and rank == 0)
        if adapter is not None:
            lm = scoring.with_adapter(lm, adapter)  # merged in float32, unmerged in bf16 (see there)
        sets = _prompt_sets(prep, cb, pc, tok, {"rows": r[mine]}, max_length)
        meta["mean_prompt_tokens"] = float(np.mean([len(x) for x in sets["rows"].ids])) if len(mine) else 0.0
        scorer = scoring.Scorer(lm, tok, batch_size=batch_size)
        t0 = time.perf_counter()
        s_mine = scorer.score_ids(sets["rows"].ids, progress=progress and rank == 0, desc="score prompts")
        meta["seconds"] = time.perf_counter() - t0
    if world == 1:
        return s_mine
    import torch.distributed as tdist

    if not tdist.is_initialized():
        tdist.init_process_group(backend="nccl" if dev.startswith("cuda") else "gloo")
    parts: list = [None] * world
    tdist.all_gather_object(parts, (mine, s_mine))
    if rank != 0:
        return None
    s_all = np.empty(len(r), np.float32)
    for idx, s in parts:
        s_all[idx] = s
    return s_all


# ---------------------------------------------------------------------------- evaluate


def evaluate(data_dir: str | os.PathLike, score_files: Mapping[str, str | os.PathLike] | Sequence[str | os.PathLike],
             out: str | os.PathLike | None = None, pairs: Sequence[tuple[str, str]] = (), popularity: bool = True,
             n_boot: int = 1000, seed: int = 0, title: str | None = None, notes: Sequence[str] = ()) -> dict:
    """Metrics of any set of score files on the same rows, with 95% bootstrap intervals.

    Rows of the table: each score file (named by the dict key, else the file
    stem), plus the item-popularity baseline (`popularity`). `pairs` (a, b) add
    paired-bootstrap intervals of a - b. Counts of warm and cold rows are part of
    the result. With `out` (a path without suffix) writes out.md, out.json and
    out.png atomically. Returns the result dict."""
    from binllm import data

    files = dict(score_files) if isinstance(score_files, Mapping) else {Path(f).stem: f for f in score_files}
    if not files:
        raise StageError("evaluate needs at least one score file")
    prep = data.load_prepared(data_dir)
    rows = None
    scores: dict[str, np.ndarray] = {}
    for name, f in files.items():
        r, s, _ = read_scores(f)
        if rows is None:
            rows = r
        elif not np.array_equal(rows, r):
            raise StageError(f"score file {f} ({name}) covers other rows than {next(iter(files.values()))}; "
                             "score every method on the same rows (same --split, --rows, --seed)")
        if len(r) and (r.min() < 0 or r.max() >= len(prep.rows)):
            raise StageError(f"score file {f} has row numbers outside the dataset {data_dir}")
        scores[name] = s
    assert rows is not None
    if popularity:
        scores["item popularity"] = baseline_scores(prep, "popularity", rows)
    sub = prep.rows.iloc[rows]
    u, y, w = sub["uid"].to_numpy(), sub["label"].to_numpy(), sub["not_cold"].to_numpy().astype(bool)
    res = {name: metrics.evaluate(u, y, s, w, n_boot=n_boot, seed=seed) for name, s in scores.items()}
    diffs = {}
    for a, b in pairs:
        if a not in scores or b not in scores:
            raise StageError(f"pair ({a!r}, {b!r}) names a method without scores; have {sorted(scores)}")
        diffs[f"{a} - {b}"] = metrics.paired_bootstrap(u, y, scores[a], scores[b], n_boot=n_boot, seed=seed)
    summary = {"rows": int(len(rows)), "warm_rows": int(w.sum()), "cold_rows": int((~w).sum()),
               "users": int(len(np.unique(u))), "positive_rate": float(y.mean()) if len(y) else float("nan"),
               "results": res, "differences": diffs, "n_boot": n_boot, "files": {k: str(v) for k, v in files.items()}}
    if out is not None:
        out_p = Path(out)
        md = results_markdown(summary, title=title, notes=notes)
        atomic_write_json(out_p.with_suffix(".json"), summary)
        atomic_write_text(out_p.with_suffix(".md"), md)
        plot_results(summary, out_p.with_suffix(".png"))
    return summary


def results_markdown(s: dict, title: str | None = None, notes: Sequence[str] = ()) -> str:
    """The evaluation as markdown: counts, the metrics table, paired differences."""
    lines = [f"# {title}" if title else "# binllm evaluate", "",
             f"{s['rows']:,} rows of {s['users']:,} users ({s['warm_rows']:,} warm = user and item seen in train, "
             f"{s['cold_rows']:,} cold), positive rate {s['positive_rate']:.3f}. Intervals: 95% bootstrap "
             f"({s['n_boot']} resamples; rows for AUC, users for UAUC).", "",
             metrics.table(s["results"]), ""]
    if s["differences"]:
        lines += ["Paired differences on the same rows (95% paired-bootstrap intervals):", "",
                  metrics.diff_table(s["differences"]), ""]
    lines += list(notes)
    return "\n".join(lines) + "\n"


def plot_results(s: dict, path: Path) -> None:
    """AUC and UAUC per method with their intervals (skipped without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    names = list(s["results"])
    fig, axes = plt.subplots(1, 2, figsize=(9, 0.45 * len(names) + 1.5), sharey=True)
    for ax, key in zip(axes, ("auc", "uauc")):
        vals = np.array([s["results"][n].get(key, np.nan) for n in names], float)
        lo = np.array([s["results"][n].get(f"{key}_lo", np.nan) for n in names], float)
        hi = np.array([s["results"][n].get(f"{key}_hi", np.nan) for n in names], float)
        err = np.nan_to_num(np.vstack([vals - lo, hi - vals]), nan=0.0)
        ax.errorbar(vals, np.arange(len(names)), xerr=err, fmt="o", capsize=3)
        ax.axvline(0.5, color="grey", lw=0.5)
        ax.set_xlabel(key.upper())
    axes[0].set_yticks(np.arange(len(names)), names, fontsize=8)
    axes[0].invert_yaxis()
    fig.tight_layout()

    def writer(tmp: Path) -> None:
        fig.savefig(tmp, dpi=110, format="png")

    atomic_save(path, writer)
    plt.close(fig)
