"""The LLM layer: everything that touches a causal LM. Prompts from templates with text and code
fields (:mod:`~binllm.llm.prompts`), loading a model and Yes/No scores at the last position
(:mod:`~binllm.llm.scoring`), one prefix pass for prompts that share it
(:mod:`~binllm.llm.prefix_scoring`), and LoRA tuning through the HF Trainer
(:mod:`~binllm.llm.tuning`).

May import: the leaves, ``binllm.kernels``, ``binllm.data`` and ``binllm.cf``; never
``binllm.lists``, ``binllm.run`` or the command line. torch, transformers and peft load inside
the functions that need them, so ``import binllm.llm`` stays light.
"""
from __future__ import annotations

from binllm.llm.prefix_scoring import PrefixScorer
from binllm.llm.prompts import PromptBuilder, PromptConfig
from binllm.llm.scoring import Scorer, load_llm
from binllm.llm.tuning import TuneConfig, tune

__all__ = ["PrefixScorer", "PromptBuilder", "PromptConfig", "Scorer", "TuneConfig", "load_llm", "tune"]
