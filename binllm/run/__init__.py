"""The workflow layer: a run folder and its stages. The stages as library functions, each
reading and writing one documented place, atomically, skipped when done and resumed when
interrupted (:mod:`~binllm.run.stages`: prepare, pretrain, tune, score, evaluate), and the main
job that composes them under one folder (:mod:`~binllm.run.pipeline`: ``binllm run``).

May import every layer below (``binllm.lists`` included); never the command line, which is
the thin face over these functions.
"""
from __future__ import annotations

from binllm.run.pipeline import RunConfig, run
from binllm.run.stages import StageError, evaluate, prepare, pretrain, score, tune

__all__ = ["RunConfig", "StageError", "evaluate", "prepare", "pretrain", "run", "score", "tune"]
