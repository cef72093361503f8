"""What the list stages read from a finished ``binllm run`` folder, and where: the prepared
dataset, the two code books (checked against the dataset), the MF embeddings and the tuned
adapters. The one place in ``binllm.lists`` that knows the run folder's paths (the folder's
layout is documented in :mod:`binllm.run.stages`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from binllm.cf.codebook import CodeBook
    from binllm.data import Prepared

PROMPT_CODEBOOK = Path("hash") / "codebook.safetensors"
RETRIEVAL_CODEBOOK = Path("hash") / "retrieval_codebook.safetensors"
MF_CHECKPOINT = Path("hash") / "mf" / "checkpoint.pt"


def load_mf(run_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """MF user and item embeddings (float32 (slots, d) each) of the run's best MF state.

    Read with :func:`binllm.cf.hashing.load_best` from ``hash/mf``."""
    from binllm.cf import hashing

    mf_dir = (Path(run_dir) / MF_CHECKPOINT).parent
    if not (Path(run_dir) / MF_CHECKPOINT).is_file():
        raise ValueError(f"run_dir {run_dir} has no MF checkpoint ({Path(run_dir) / MF_CHECKPOINT}); "
                         "train it with `binllm pretrain --mf` or `binllm run`")
    model = hashing.load_best(mf_dir)
    return (model.user_emb.weight.detach().float().numpy().copy(),
            model.item_emb.weight.detach().float().numpy().copy())


def load_codebook(path: Path, prep: Prepared, run_dir: str | os.PathLike) -> CodeBook:
    """A code book of the run, checked against its dataset (errors name the run folder)."""
    from binllm.cf.codebook import CodeBook

    cb = CodeBook.load(path)
    try:
        cb.check_dataset(prep)
    except ValueError as e:
        raise ValueError(f"run_dir {run_dir}: {e}") from None
    return cb


def learned_bits(cb: CodeBook) -> tuple[np.ndarray, np.ndarray, int]:
    """The learned bits of a retrieval code book (its first ``learned_bits``, before the prior bits)."""
    from binllm.kernels import codes as _codes

    d = int(cb.config.get("learned_bits", cb.d))
    if d == cb.d:
        return cb.user_codes, cb.item_codes, d
    cut = lambda c: np.packbits(_codes.unpack_bits(c, cb.d)[:, :d], axis=1)  # noqa: E731
    return cut(cb.user_codes), cut(cb.item_codes), d


def run_data_dir(run_dir: Path) -> Path:
    """The prepared dataset of a run: run_config.json's `data` (``binllm run --data``) or RUN/data."""
    cfg = run_dir / "run_config.json"
    if cfg.is_file():
        d = json.loads(cfg.read_text()).get("data")
        if d:
            return Path(d)
    return run_dir / "data"


def adapter_dir(run_dir: Path, method: str) -> Path:
    """The adapter folder of re-ranking method 'text' (step 1) or 'binllm' (step 2, the run's code style first)."""
    if method == "text":
        return run_dir / "llm" / "text" / "adapter"
    style = None
    cfg = run_dir / "run_config.json"
    if cfg.is_file():
        style = json.loads(cfg.read_text()).get("code_style")
    names = [f"binllm_{style}"] if style else []
    names += [x for x in ("binllm_dotted", "binllm_bits") if x not in names]
    for name in names:
        if (run_dir / "llm" / name / "adapter").is_dir():
            return run_dir / "llm" / name / "adapter"
    return run_dir / "llm" / names[0] / "adapter"
