"""LoRA tuning of a causal LM on Yes/No prompts, through the Hugging Face Trainer.

The loss is BCE-with-logits on the " Yes" logit at the last prompt position
(the reference) or cross-entropy on the answer token; evaluation rounds score
``valid_small`` and keep the adapter with the best AUC, with early stopping.
Because this is the stock ``Trainer``, ``torchrun --nproc-per-node N`` and
``accelerate launch`` run it on many GPUs (or CPU processes with gloo) with no
code change; checkpoints land in ``out_dir/checkpoints`` and an interrupted run
resumes from the last one. Two-step tuning is two calls: the second starts
from the first call's adapter (``init_adapter``) and keeps training it.

On a CPU (one process, more than one torch thread) a training step cuts its
batch into shards that run forward and backward side by side, one torch
thread each (:func:`backward_in_shards`, on :func:`binllm.threads.map_parallel`
workers): no OpenMP barrier inside a layer, so a step holds up when other
processes share the cores. LoRA dropout then draws each shard's masks from a
generator seeded from torch's, so training stays reproducible.
"""
from __future__ import annotations

import functools
import json
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from binllm import metrics, threads
from binllm._io import atomic_write_json
from binllm.llm.scoring import answer_token_ids, collate_left, last_logits, pad_id
from binllm.progress import is_terminal, log


@dataclass
class TuneConfig:
    """LoRA and optimisation settings.

    Args:
        lora_r: LoRA rank (reference: 8).
        lora_alpha: LoRA scaling numerator, alpha / r scales the update (reference: 16).
        lora_dropout: dropout on the LoRA inputs (reference: 0.05).
        target_modules: the linear layers that get an adapter (reference: q_proj, v_proj).
        lr: peak learning rate (AdamW, warmup then cosine decay).
        batch_size: prompts per device and step; grad_accum: steps accumulated per update.
        max_steps: optimizer updates at most.
        eval_steps: updates between evaluation rounds on valid_small (and checkpoints).
        patience: evaluation rounds without a better valid AUC before stopping.
        warmup_steps: updates of linear learning-rate warmup before the cosine decay.
        weight_decay: AdamW weight decay (reference: 1e-3).
        loss: 'bce' (on the Yes logit, the reference) or 'ce' (cross-entropy on the answer token).
        eval_batch_size: prompts per forward pass when evaluating.
        group_by_length: draw training batches from prompts of similar length (shuffled groups of
            50 batches sorted by length), so a batch pads less (compute on padding is wasted).
        seed: data order and LoRA init.
    """

    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    lr: float = 1e-3
    batch_size: int = 8
    grad_accum: int = 1
    max_steps: int = 300
    eval_steps: int = 50
    patience: int = 20
    warmup_steps: int = 20
    weight_decay: float = 1e-3
    loss: str = "bce"
    eval_batch_size: int = 32
    group_by_length: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.loss not in ("bce", "ce"):
            raise ValueError(f"loss must be 'bce' or 'ce'; got {self.loss!r}")
        for name in ("lora_r", "batch_size", "grad_accum", "max_steps", "eval_steps", "patience", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0; got {self.lr}")
        self.target_modules = tuple(self.target_modules)


@dataclass
class PromptSet:
    """Tokenized prompts with their labels and users (for UAUC)."""

    ids: list[list[int]]
    labels: np.ndarray
    users: np.ndarray

    def __post_init__(self) -> None:
        if not (len(self.ids) == len(self.labels) == len(self.users)):
            raise ValueError("ids, labels and users must have one entry per prompt")
        if len(self.ids) == 0:
            raise ValueError("a prompt set is empty; nothing to train or evaluate on")


class _Rows:
    """A map-style dataset over a PromptSet."""

    def __init__(self, s: PromptSet):
        self.s = s

    def __len__(self) -> int:
        return len(self.s.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.s.ids[i], "labels": float(self.s.labels[i]), "users": int(self.s.users[i])}


class _Collator:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: Sequence[dict]) -> dict:
        import torch

        ids, mask, pos = collate_left([b["input_ids"] for b in batch], self.pad_id)
        return {"input_ids": ids, "attention_mask": mask, "position_ids": pos,
                "labels": torch.tensor([b["labels"] for b in batch], dtype=torch.float32),
                "users": torch.tensor([b["users"] for b in batch], dtype=torch.long)}


_shard_rng = threading.local()  # .generator: the dropout generator of the shard this thread runs, else None


@functools.cache  # one class per process, made on first use (torch loads lazily)
def _worker_dropout_class() -> type:
    import torch

    class WorkerDropout(torch.nn.Module):
        """``nn.Dropout`` for LoRA inputs whose masks come from the generator of the shard the calling
        thread runs (see :func:`backward_in_shards`), or from torch's global one outside a shard (then it
        draws exactly what ``nn.Dropout`` would). Shards on parallel threads sharing the global
        generator would take their masks in whichever order the threads reach it."""

        def __init__(self, p: float):
            super().__init__()
            self.p = float(p)

        def forward(self, x: Any) -> Any:
            gen = getattr(_shard_rng, "generator", None)
            if not self.training or self.p == 0.0 or gen is None:
                return torch.nn.functional.dropout(x, self.p, self.training)
            keep = torch.empty_like(x).bernoulli_(1.0 - self.p, generator=gen)
            return x * keep / (1.0 - self.p)

        def extra_repr(self) -> str:
            return f"p={self.p}"

    return WorkerDropout


def use_shard_dropout(model: Any) -> bool:
    """Replaces peft's LoRA dropout modules in `model` by ones that draw from each shard's generator
    (no parameters change, an adapter saves the same). Returns whether training can then run in shards
    reproducibly: False when the model keeps other active dropout (an ``nn.Dropout`` with p > 0, or a
    config ``*dropout`` / ``*pdrop`` value > 0 such as attention dropout), whose masks would come from
    torch's global generator in thread order."""
    import torch

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (a peft model); got {type(model).__name__}")
    worker_dropout = _worker_dropout_class()
    for mod in model.modules():
        drops = getattr(mod, "lora_dropout", None)
        if isinstance(drops, torch.nn.ModuleDict):
            for name, d in list(drops.items()):
                if type(d) is torch.nn.Dropout:
                    drops[name] = worker_dropout(d.p)
    if any(type(m) is torch.nn.Dropout and m.p > 0 for m in model.modules()):
        return False
    to_dict = getattr(getattr(model, "config", None), "to_dict", None)
    cfg = to_dict() if callable(to_dict) else {}
    return not any(("dropout" in k or "pdrop" in k) and isinstance(v, (int, float)) and not isinstance(v, bool)
                   and v > 0 for k, v in cfg.items())


def _batch_rows(inputs: dict[str, Any]) -> int:
    """Prompts in a collated batch; a ValueError naming `inputs` if it lacks the tensors shards need."""
    missing = [k for k in ("input_ids", "attention_mask") if k not in inputs]
    if missing:
        raise ValueError(f"inputs must hold input_ids and attention_mask tensors; missing {', '.join(missing)}")
    return int(inputs["input_ids"].shape[0])


def shard_batch(inputs: dict[str, Any], parts: int) -> list[dict[str, Any]]:
    """Cuts a left-padded batch (input_ids, attention_mask, position_ids and per-prompt tensors) into
    `parts` contiguous shards of near-equal size, each without the pad columns no prompt of it needs."""
    if isinstance(parts, bool) or not isinstance(parts, int) or parts < 1:
        raise ValueError(f"parts must be an integer >= 1; got {parts!r}")
    n = _batch_rows(inputs)
    bounds = np.linspace(0, n, min(parts, n) + 1).round().astype(int)
    out = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        sub = {k: v[a:b] for k, v in inputs.items()}
        width = int(sub["attention_mask"].sum(1).max())
        for k in ("input_ids", "attention_mask", "position_ids"):
            if k in sub:
                sub[k] = sub[k][:, sub[k].shape[1] - width:]
        out.append(sub)
    return out


def backward_in_shards(loss_of: Callable[[dict[str, Any]], Any], inputs: dict[str, Any], params: Sequence[Any],
                       scale: float = 1.0, total: int | None = None) -> Any:
    """``(loss_of(inputs) * scale).backward()`` for a batch-mean loss, the batch cut into one shard per
    worker of :func:`binllm.threads.map_parallel` (`total` threads; default torch's count).

    Each worker computes its shard's loss and, with ``torch.autograd.grad``, the gradients of
    `params` (the trainable parameters) weighted by its share of the batch; they are added to
    ``.grad`` in shard order, so the result does not depend on which thread ends first. Dropout
    masks of :func:`use_shard_dropout` modules come from a generator per shard, seeded from torch's
    global one. Returns the batch loss (detached, weighted mean of the shards' losses, times `scale`).
    """
    import torch

    n = _batch_rows(inputs)
    workers, _ = threads.workers_for(n, total if total is not None else torch.get_num_threads())
    shards = shard_batch(inputs, workers)
    seeds = torch.randint(0, 2**62, (len(shards),)).tolist()  # from the global generator: reproducible

    def one(shard_and_seed: tuple[dict[str, Any], int]) -> tuple[Any, tuple[Any, ...]]:
        sub, seed = shard_and_seed
        weight = scale * sub["input_ids"].shape[0] / n
        _shard_rng.generator = torch.Generator().manual_seed(int(seed))
        try:
            loss = loss_of(sub) * weight
            return loss.detach(), torch.autograd.grad(loss, list(params), allow_unused=True)
        finally:
            _shard_rng.generator = None

    results = threads.map_parallel(one, list(zip(shards, seeds)), total=total)
    for i, p in enumerate(params):
        for _, grads in results:
            g = grads[i]
            if g is not None:
                p.grad = g if p.grad is None else p.grad + g
    return sum(loss for loss, _ in results)


def _trainer_class():
    import torch
    from transformers import Trainer

    class YesNoTrainer(Trainer):
        """Trainer whose loss and predictions use the answer logits at the last position; on a
        CPU its steps run in shards on parallel workers (:func:`backward_in_shards`)."""

        # compute_loss returns a batch mean and ignores num_items_in_batch: the Trainer must divide it by
        # the accumulation steps (left at None, it takes the loss of a model accepting **kwargs as scaled)
        loss_is_scaled_for_ga = False

        def __init__(self, *args, yes_id: int, no_id: int, loss_kind: str, shards_ok: bool = False, **kw):
            super().__init__(*args, **kw)
            self.yes_id, self.no_id, self.loss_kind = yes_id, no_id, loss_kind
            self.shards_ok = shards_ok

        def _in_shards(self, inputs: dict, training: bool = True) -> bool:
            """Whether a batch runs in shards: one CPU process, torch on more than one thread, more than
            one prompt, and (training) no dropout drawn from torch's global generator."""
            from accelerate.utils import DistributedType

            return ((self.shards_ok or not training) and self.args.device.type == "cpu" and self.args.n_gpu <= 1
                    and self.accelerator.distributed_type == DistributedType.NO
                    and torch.get_num_threads() > 1 and int(inputs["input_ids"].shape[0]) > 1)

        def training_step(self, model, inputs, num_items_in_batch=None):
            if not self._in_shards(inputs):
                return super().training_step(model, inputs, num_items_in_batch)
            model.train()
            inputs = self._prepare_inputs(inputs)
            params = [p for p in model.parameters() if p.requires_grad]

            def loss_of(sub: dict) -> Any:
                with self.compute_loss_context_manager():
                    return self.compute_loss(model, sub)

            return backward_in_shards(loss_of, inputs, params, 1.0 / self.current_gradient_accumulation_steps)

        def evaluate(self, *args, **kw):
            # An evaluation round draws from torch's CPU generator (each DataLoader iterator takes a base
            # seed from it), which moved the LoRA dropout masks of every later step: how often one
            # validated changed the adapter one trained. Restoring the state keeps training the same.
            state = torch.random.get_rng_state()
            try:
                return super().evaluate(*args, **kw)
            finally:
                torch.random.set_rng_state(state)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs["labels"]
            logits = last_logits(model, inputs["input_ids"], inputs["attention_mask"], inputs["position_ids"]).float()
            yes = logits[:, self.yes_id]
            if self.loss_kind == "bce":
                loss = torch.nn.functional.binary_cross_entropy_with_logits(yes, labels)
            else:
                target = torch.where(labels > 0.5, self.yes_id, self.no_id)
                loss = torch.nn.functional.cross_entropy(logits, target)
            return (loss, yes) if return_outputs else loss

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            inputs = self._prepare_inputs(inputs)
            with torch.no_grad():
                if self._in_shards(inputs, training=False):
                    n = int(inputs["input_ids"].shape[0])
                    parts = threads.map_parallel(lambda sub: self.compute_loss(model, sub, return_outputs=True),
                                                 shard_batch(inputs, torch.get_num_threads()))
                    loss = sum(part_loss * (len(part_yes) / n) for part_loss, part_yes in parts)
                    yes = torch.cat([part_yes for _, part_yes in parts])
                else:
                    loss, yes = self.compute_loss(model, inputs, return_outputs=True)
            # users stay int64 (a float32 round trip merges user ids above 2**24 in UAUC)
            return loss.detach(), yes.detach(), (inputs["labels"], inputs["users"])

    return YesNoTrainer


def _length_grouping(on: bool) -> dict[str, Any]:  # TrainingArguments keywords
    """The TrainingArguments that turn length-grouped sampling on or off: transformers 5.x
    releases before early 2026 name it `group_by_length`, later ones `train_sampling_strategy`."""
    import dataclasses

    from transformers import TrainingArguments

    if any(f.name == "train_sampling_strategy" for f in dataclasses.fields(TrainingArguments)):
        return {"train_sampling_strategy": "group_by_length" if on else "random"}
    return {"group_by_length": on}


def _compute_metrics(pred) -> dict:
    scores = np.asarray(pred.predictions).reshape(-1)
    labels, users = pred.label_ids
    y, u = np.asarray(labels).reshape(-1).astype(np.int64), np.asarray(users).reshape(-1).astype(np.int64)
    a = metrics.auc(y, scores)
    ua = metrics.uauc(u, y, scores)[0]
    # An undefined AUC (one class in the sample) counts as chance for early stopping, and the history says so.
    return {"auc": float(a) if np.isfinite(a) else 0.5, "uauc": float(ua) if np.isfinite(ua) else 0.5,
            "auc_undefined": float(not np.isfinite(a)), "uauc_undefined": float(not np.isfinite(ua))}


@dataclass
class TuneResult:
    model: Any
    adapter_dir: Path
    history: list[dict] = field(default_factory=list)
    best_auc: float | None = None


def lora_config(cfg: TuneConfig) -> Any:
    """peft's LoraConfig for `cfg` (its rank, alpha, dropout and target modules; a causal LM)."""
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.target_modules), task_type="CAUSAL_LM")


def check_init_adapter(init_adapter: str | os.PathLike, cfg: TuneConfig) -> dict:
    """The saved LoRA config of `init_adapter` (its ``adapter_config.json``) when `cfg` can continue it.

    A continued adapter keeps its shape: its rank, alpha and target modules are in
    its weights, so a `cfg` asking for others is an error naming both (peft would
    silently keep the saved ones). Dropout is not in the weights; the continued
    step runs with ``cfg.lora_dropout`` (see `tune`)."""
    f = Path(init_adapter) / "adapter_config.json"
    if not f.is_file():
        raise FileNotFoundError(f"init_adapter {init_adapter} has no adapter_config.json")
    saved = json.loads(f.read_text(encoding="utf-8"))
    ours = {"r": cfg.lora_r, "lora_alpha": cfg.lora_alpha, "target_modules": sorted(cfg.target_modules)}
    theirs = {"r": saved.get("r"), "lora_alpha": saved.get("lora_alpha"),
              "target_modules": sorted(saved.get("target_modules") or [])}
    if ours != theirs:
        diff = ", ".join(f"{k} {ours[k]} vs {theirs[k]}" for k in ours if ours[k] != theirs[k])
        raise ValueError(f"cfg: the LoRA shape differs from init_adapter {init_adapter} ({diff}); a continued "
                         "adapter keeps its rank, alpha and target modules: tune the first step with the same ones")
    return saved


def tune(base_model: Any, tokenizer: Any, train: PromptSet, valid: PromptSet, cfg: TuneConfig,
         out_dir: str | os.PathLike, init_adapter: str | os.PathLike | None = None, meta: dict | None = None,
         progress: bool = True, use_cpu: bool | None = None, bf16: bool = False) -> TuneResult:
    """Trains a LoRA adapter (new, or continuing `init_adapter`) and saves the best one.

    Returns the tuned peft model (best adapter loaded), the adapter folder
    ``out_dir/adapter`` (with ``binllm.json``: the config, `meta` such as the
    prompt config and code book fingerprint, and the evaluation history)."""
    import torch
    from peft import PeftModel, get_peft_model
    from transformers import EarlyStoppingCallback, TrainerCallback, TrainingArguments
    from transformers.trainer_utils import get_last_checkpoint

    yes_id, no_id = answer_token_ids(tokenizer)
    out = Path(out_dir)
    if init_adapter is not None:
        from peft import LoraConfig

        check_init_adapter(init_adapter, cfg)
        saved = LoraConfig.from_pretrained(str(init_adapter))
        # peft would train on with the saved dropout and ignore cfg's: the continued step's own setting applies
        saved.lora_dropout = cfg.lora_dropout
        model = PeftModel.from_pretrained(base_model, str(init_adapter), is_trainable=True, config=saved)
    else:
        torch.manual_seed(cfg.seed)
        model = get_peft_model(base_model, lora_config(cfg))
    shards_ok = use_shard_dropout(model)
    if use_cpu is None:
        use_cpu = not torch.cuda.is_available()
    ckpt_dir = out / "checkpoints"
    args = TrainingArguments(
        output_dir=str(ckpt_dir), per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr, weight_decay=cfg.weight_decay, lr_scheduler_type="cosine",
        warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps, eval_strategy="steps", eval_steps=cfg.eval_steps,
        save_strategy="steps", save_steps=cfg.eval_steps, save_total_limit=2, load_best_model_at_end=True,
        metric_for_best_model="auc", greater_is_better=True, logging_steps=max(1, min(10, cfg.eval_steps)),
        report_to=[], use_cpu=use_cpu, bf16=bf16, seed=cfg.seed, data_seed=cfg.seed,
        remove_unused_columns=False, dataloader_num_workers=0, ddp_find_unused_parameters=False,
        disable_tqdm=not progress or not is_terminal(), label_names=["labels", "users"], save_only_model=False,
        **_length_grouping(cfg.group_by_length))
    class _LogEvaluations(TrainerCallback):
        """One line per evaluation round, so a log (no progress bar) shows how tuning goes."""

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict | None = None, **kw: Any) -> None:
            if progress and state.is_world_process_zero and metrics:
                best = state.best_metric if state.best_metric is not None else -1.0  # None before the first round
                log(f"tune: step {state.global_step}/{state.max_steps}: valid AUC {metrics.get('eval_auc', 0):.4f} "
                    f"UAUC {metrics.get('eval_uauc', 0):.4f} (best so far {max(best, metrics.get('eval_auc', 0)):.4f})")

    class _LogToFile(TrainerCallback):
        """The Trainer's metric dicts (loss, grad norm, learning rate every few steps) as JSON lines in
        ``out_dir/trainer_log.jsonl``, in place of its PrinterCallback, which prints them on stdout.
        Appended line by line, not written atomically: it is a log, read while tuning runs."""

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any) -> None:
            if state.is_world_process_zero and logs:
                out.mkdir(parents=True, exist_ok=True)
                with open(out / "trainer_log.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps({"step": state.global_step, **logs}, default=str) + "\n")

    trainer = _trainer_class()(
        model=model, args=args, train_dataset=_Rows(train), eval_dataset=_Rows(valid),
        data_collator=_Collator(pad_id(tokenizer)), compute_metrics=_compute_metrics,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=cfg.patience), _LogEvaluations(), _LogToFile()],
        yes_id=yes_id, no_id=no_id, loss_kind=cfg.loss, shards_ok=shards_ok)
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # its dicts go to trainer_log.jsonl (_LogToFile)
    last = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
    trainer.train(resume_from_checkpoint=last)
    history = [h for h in trainer.state.log_history if "eval_auc" in h]
    adapter = out / "adapter"
    trainer.save_model(str(adapter))
    if trainer.is_world_process_zero():
        info = {"tune_config": asdict(cfg), "meta": meta or {}, "history": history,
                "best_auc": trainer.state.best_metric, "init_adapter": str(init_adapter) if init_adapter else None}
        atomic_write_json(adapter / "binllm.json", json.loads(json.dumps(info, default=str)))
    return TuneResult(trainer.model, adapter, history, trainer.state.best_metric)
