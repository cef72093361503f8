"""The benchmark suites of ``binllm bench``: one module a suite, each timing binllm
against every installed peer after checking that the peer gives binllm's result.

* ``codes``: packing, all-pairs scores, top-k and text formats vs numpy, torch,
  FAISS, NumKong, SimSIMD and usearch (:mod:`.codes`);
* ``data``: the Amazon-Book protocol on a generated 5M-review file vs pandas (:mod:`.data`);
* ``hashing``: hash-model epochs vs a reference-style DataLoader loop (:mod:`.hashing`);
* ``llm``: prompt tokens, scoring, tuning and sharded scoring on SmolLM2 (:mod:`.llm`).

Every table starts from the machine facts and measured limits (:mod:`.machine`)
and is written as markdown, CSV and a plot (:mod:`.report`). Suites are imported
only when run, so ``import binllm`` never pulls in torch or the peers.

The repository's top-level ``bench/`` holds the other benchmarks: scripts this command does not run
(they need the repository checkout, a GPU or long runs), and every committed table (``bench/results/``).
"""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

#: suite -> (module, packages it needs, the extra that installs them)
SUITES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "codes": ("codes", (), "bench"),
    "data": ("data", ("pandas", "pyarrow"), "data"),
    "hashing": ("hashing", ("torch", "pandas", "pyarrow"), "train"),
    "llm": ("llm", ("torch", "transformers", "peft", "gguf", "safetensors", "pandas", "pyarrow"), "llm"),
}


def check_suite(suite: str) -> None:
    """Raises ValueError (one line) for an unknown suite or one whose packages are missing."""
    if suite not in SUITES:
        raise ValueError(f"suite must be one of {', '.join(SUITES)}; got {suite!r}")
    _, needs, extra = SUITES[suite]
    missing = [p for p in needs if importlib.util.find_spec(p) is None]
    if missing:
        raise ValueError(f"the {suite} suite needs {', '.join(missing)} (pip install 'binllm[{extra}]')")


def check_out_dir(out: str | Path) -> Path:
    """The output folder, created; ValueError naming --out when it is a file or cannot be made."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {path} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out {path} cannot be created: {e.strerror or e}") from None
    return path


def run(suite: str, out: str | Path, quick: bool = False, progress: bool = True) -> Path:
    """Runs one suite (a key of SUITES), writes its table, CSV and plot into `out`; returns the .md path."""
    check_suite(suite)
    out_dir = check_out_dir(out)
    module = importlib.import_module(f"{__name__}.{SUITES[suite][0]}")
    path: Path = module.run(out_dir, quick=quick, progress=progress)
    return path
