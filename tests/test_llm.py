"""Prompts, Yes/No scoring and LoRA tuning on a tiny in-code Llama."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from binllm import data
from binllm.cf.codebook import CodeBook
from binllm.llm import prompts, scoring, tuning
from binllm.llm.prompts import PromptBuilder, PromptConfig

from conftest import PKG_PARENT
from tiny_llm import make_tiny_llm


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_llm(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def lm(tiny):
    return scoring.load_llm(str(tiny), dtype="float32", device="cpu")


TITLES = np.array(["", "Alpha (1999)", "Beta (2000)", "Gamma (1990)"], object)


def codebook(n_users=3, n_items=4, d=32):
    rng = np.random.default_rng(0)
    u = rng.integers(0, 256, (n_users, d // 8), dtype=np.uint8)
    i = rng.integers(0, 256, (n_items, d // 8), dtype=np.uint8)
    return CodeBook(u, i, d, np.array([""] + [f"u{k}" for k in range(1, n_users)], object),
                    np.array([""] + [f"i{k}" for k in range(1, n_items)], object))


def test_prompt_filling():
    cb = codebook()
    b = PromptBuilder(PromptConfig(kind="text_codes"), TITLES, cb)
    p = b.build([1, 2], [3, 1], [np.array([1, 2]), np.array([], np.int32)])
    ucode = ".".join(map(str, cb.user_codes[1]))
    icode = ".".join(map(str, cb.item_codes[3]))
    assert p[0] == ('#Question: A user has given high ratings to the following movies: "Alpha (1999)", "Beta (2000)". '
                    "Additionally, we have information about the user's preferences encoded in the feature "
                    f"{ucode}. Using all available information, make a prediction about whether the user would "
                    f'enjoy the movie titled "Gamma (1990)" with the feature {icode}? Answer with "Yes" or "No". '
                    "\n#Answer:")
    assert "following movies: None." in p[1]
    bits = PromptBuilder(PromptConfig(kind="codes", code_style="bits"), TITLES, cb).build([1], [2], [np.array([1])])
    assert "".join(map(str, np.unpackbits(cb.user_codes[1]))) in bits[0] and "Alpha" not in bits[0]
    # only the latest max_titles titles, oldest first
    t = PromptBuilder(PromptConfig(kind="text", max_titles=2), TITLES, None).build([1], [1], [np.array([3, 1, 2])])
    assert '"Alpha (1999)", "Beta (2000)"' in t[0] and "Gamma" not in t[0].split("titled")[0]
    assert "books" in prompts.packaged_template("text", "book")
    # a history shorter than the cap is kept whole (3 and 4 liked items under a cap of 5 lost their oldest)
    for n_liked in (3, 4):
        p3 = PromptBuilder(PromptConfig(kind="text", max_titles=5), np.array([""] + [f"T{k}" for k in range(1, 6)],
                           object), None).build([1], [5], [np.arange(1, n_liked + 1)])
        assert all(f'"T{k}"' in p3[0] for k in range(1, n_liked + 1))


def test_prompt_bad_input():
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['<UserCode>'\]"):
        PromptConfig(template="<UserCode> <TargetItemTitle>")
    with pytest.raises(ValueError, match="must contain <TargetItemTitle> or <TargetItemID>"):
        PromptConfig(template="hello <ItemTitleList>")
    with pytest.raises(ValueError, match="no codebook was given"):
        PromptBuilder(PromptConfig(kind="text_codes"), TITLES, None)
    with pytest.raises(ValueError, match="code_style must be"):
        PromptConfig(code_style="hex")
    with pytest.raises(ValueError, match="iids must lie in 0..3"):
        PromptBuilder(PromptConfig(kind="text"), TITLES).build([1], [9], [np.array([1])])


def test_answer_tokens_and_model_folder_errors(lm, tmp_path):
    model, tok = lm
    y, n = scoring.answer_token_ids(tok)
    assert y != n
    with pytest.raises(ValueError, match=r"yes answer . Yes please. is \d+ tokens"):
        scoring.answer_token_ids(tok, yes=" Yes please")
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        scoring.load_llm(str(tmp_path / "nope"))
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="has no tokenizer"):
        scoring.load_llm(str(tmp_path / "m"))


def manual_scores(model, tok, prompt_list, yes_id, no_id):
    out = []
    with torch.no_grad():
        for p in prompt_list:
            ids = torch.tensor([tok(p, add_special_tokens=False)["input_ids"]])
            logits = model(input_ids=ids).logits[0, -1]
            out.append((logits[yes_id].item(), torch.softmax(logits[[yes_id, no_id]], -1)[0].item()))
    return np.array(out)


def test_scoring_equals_manual_forward(lm):
    model, tok = lm
    ps = ['#Question: "Alpha (1999)"? Answer with "Yes" or "No". \n#Answer:',
          '#Question: A user has given high ratings to "Beta (2000)", "Gamma (1990)". Will the user enjoy the movie '
          'titled "Alpha (1999)" with the feature 1.2.3.4? Answer with "Yes" or "No". \n#Answer:',
          "None Yes"] * 3
    y, n = scoring.answer_token_ids(tok)
    ref = manual_scores(model, tok, ps, y, n)
    got = scoring.Scorer(model, tok, batch_size=4).score(ps)
    np.testing.assert_allclose(got, ref[:, 0], rtol=1e-4, atol=1e-4)
    got_p = scoring.Scorer(model, tok, mode="p_yes", batch_size=5).score(ps)
    np.testing.assert_allclose(got_p, ref[:, 1], rtol=1e-4, atol=1e-5)


def test_last_logits_one_gemm_for_a_frozen_head(lm):
    """With frozen weights (a base model under peft) the vocabulary projection of the last position
    must stay one matrix product: slicing it with the int logits_to_keep=1 made torch expand the
    output embedding to one copy per prompt (a batched matmul, ~2x slower scoring of SmolLM2)."""
    model, tok = lm
    for p in model.parameters():
        p.requires_grad_(False)
    ps = ['#Question: "Alpha (1999)"?', '#Question: A user liked "Beta (2000)". "Gamma (1990)"?', "None"] * 2
    ids, mask, pos = scoring.collate_left(scoring.tokenize(tok, ps), tok.pad_token_id)
    vocab = model.get_output_embeddings().weight.shape[0]
    with torch.inference_mode(), torch.profiler.profile(record_shapes=True) as prof:
        got = scoring.last_logits(model, ids, mask, pos)
    over_vocab = [e.input_shapes for e in prof.events()
                  if e.name in ("aten::bmm", "aten::expand") and any(vocab in s for s in e.input_shapes if s)]
    assert over_vocab == []
    assert got.shape == (len(ps), vocab)
    with torch.inference_mode():
        full = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1, :]
    np.testing.assert_allclose(got.numpy(), full.numpy(), rtol=1e-5, atol=1e-5)


def test_scorer_batches_side_by_side_equal_one_at_a_time(lm):
    """On a CPU the Scorer hands whole batches to parallel workers: the scores land in prompt order
    and agree with one batch at a time on every thread (workers=1) and with a manual forward."""
    model, tok = lm
    ps = [f'#Question: "{t}"? Answer with "Yes" or "No". \n#Answer:' + " Yes" * k
          for k, t in enumerate(["Alpha (1999)", "Beta (2000)", "Gamma (1990)"] * 5)]
    y, n = scoring.answer_token_ids(tok)
    ref = manual_scores(model, tok, ps, y, n)[:, 0]
    torch.set_num_threads(2)
    many = scoring.Scorer(model, tok, batch_size=2).score(ps)
    one = scoring.Scorer(model, tok, batch_size=2, workers=1).score(ps)
    np.testing.assert_allclose(many, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(many, one, rtol=1e-5, atol=1e-5)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="workers must be"):
            scoring.Scorer(model, tok, workers=bad)


def test_scorer_asks_for_one_worker_off_the_cpu_and_leaves_torch_threads(lm, monkeypatch):
    """Off a CPU the Scorer runs one batch at a time (max_workers=1) at torch's own thread count (no
    `total`); on a CPU it asks for its `workers` cap. A model on the meta device stands in for a GPU."""
    import copy

    from binllm import threads

    model, tok = lm
    calls = []

    def spy(fn, items, total=None, on_result=None, max_workers=None):  # noqa: ANN001, ANN202, ARG001
        calls.append((total, max_workers))
        for i, sel in enumerate(items):
            on_result(i, np.zeros(len(sel), np.float32))

    monkeypatch.setattr(threads, "map_parallel", spy)
    ps = ["a b c", "d e", "f"]
    meta = copy.deepcopy(model).to("meta")
    assert scoring.Scorer(meta, tok, batch_size=2, workers=2).score(ps).tolist() == [0.0, 0.0, 0.0]
    scoring.Scorer(model, tok, batch_size=2, workers=2).score(ps)
    scoring.Scorer(model, tok, batch_size=2).score(ps)
    assert calls == [(None, 1), (None, 2), (None, None)]


def _batch(tok, ps):
    ids, mask, pos = scoring.collate_left(scoring.tokenize(tok, ps), tok.pad_token_id)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": pos,
            "labels": torch.arange(len(ps), dtype=torch.float32) % 2}


SHARD_PROMPTS = ['#Question: "Alpha (1999)"?', '#Question: A user liked "Beta (2000)", "Gamma (1990)". '
                 '"Alpha (1999)"? Answer with "Yes" or "No".', "None", '"Gamma (1990)" 1.2.3.4', "Yes No",
                 "#Answer:", '#Question: "Beta (2000)"? Answer:']


def test_shard_batch_cuts_and_trims_padding(lm):
    _, tok = lm
    b = _batch(tok, SHARD_PROMPTS)
    shards = tuning.shard_batch(b, 3)
    assert [len(s["input_ids"]) for s in shards] == [2, 3, 2]
    assert torch.equal(torch.cat([s["labels"] for s in shards]), b["labels"])
    for s in shards:  # the widest prompt of a shard starts at column 0; each keeps its own tokens
        assert s["attention_mask"][:, 0].any() and s["input_ids"].shape == s["position_ids"].shape
    got = [row[m.bool()].tolist() for s in shards for row, m in zip(s["input_ids"], s["attention_mask"])]
    assert got == scoring.tokenize(tok, SHARD_PROMPTS)
    assert len(tuning.shard_batch(b, 20)) == len(SHARD_PROMPTS)  # never an empty shard
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="parts must be"):
            tuning.shard_batch(b, bad)


@pytest.mark.parametrize("n_threads", [1, 2])
def test_gradient_accumulation_divides_the_mean_loss(tiny, tmp_path, n_threads):
    """2 accumulated steps of 2 prompts report (and train on) the mean loss of the 4 prompts, like one
    step of 4: the Trainer took YesNoTrainer's mean loss as already scaled and doubled it."""
    _, tok = scoring.load_llm(str(tiny), dtype="float32", device="cpu")
    tr, va = prompt_set(tok, 16), prompt_set(tok, 8, seed=1)
    losses = []
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(n_threads)
        for batch, accum in ((4, 1), (2, 2)):
            model, _ = scoring.load_llm(str(tiny), dtype="float32", device="cpu")
            cfg = tuning.TuneConfig(lr=1e-6, batch_size=batch, grad_accum=accum, max_steps=1, eval_steps=1,
                                    warmup_steps=0, lora_dropout=0.0, group_by_length=False)
            res = tuning.tune(model, tok, tr, va, cfg, tmp_path / f"b{batch}", progress=False)
            log = json.loads((res.adapter_dir.parent / "checkpoints" / "checkpoint-1" / "trainer_state.json")
                             .read_text())["log_history"]
            losses.append(next(h["loss"] for h in log if "loss" in h))
    finally:
        torch.set_num_threads(before)
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)


def _loss_of(model, yes_id):
    def loss_of(b):
        yes = scoring.last_logits(model, b["input_ids"], b["attention_mask"], b["position_ids"])[:, yes_id]
        return torch.nn.functional.binary_cross_entropy_with_logits(yes, b["labels"])
    return loss_of


def _lora_grads(model):
    return [p.grad.clone() for p in model.parameters() if p.requires_grad]


def test_backward_in_shards_equals_one_backward(lm):
    """Shards on parallel workers give the whole batch's mean-loss gradients (no dropout), scaled,
    added to what .grad already holds."""
    from peft import get_peft_model

    model, tok = lm
    torch.manual_seed(0)
    m = get_peft_model(model, tuning.lora_config(tuning.TuneConfig(lora_dropout=0.0)))
    for p in m.parameters():  # lora_B starts at zero, which would leave lora_A's gradient zero
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.1)
    m.train()
    params = [p for p in m.parameters() if p.requires_grad]
    loss_of = _loss_of(m, scoring.answer_token_ids(tok)[0])
    b = _batch(tok, SHARD_PROMPTS)
    (loss_of(b) * 0.5).backward()
    ref, ref_loss = _lora_grads(m), float(loss_of(b).detach()) * 0.5
    m.zero_grad(set_to_none=True)
    for total in (2, 3):
        got_loss = tuning.backward_in_shards(loss_of, b, params, scale=0.5, total=total)
        assert float(got_loss) == pytest.approx(ref_loss, rel=1e-5)
        for r, g in zip(ref, _lora_grads(m)):
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)
        tuning.backward_in_shards(loss_of, b, params, scale=0.5, total=total)  # accumulates
        for r, g in zip(ref, _lora_grads(m)):
            torch.testing.assert_close(g, 2 * r, rtol=1e-4, atol=1e-6)
        m.zero_grad(set_to_none=True)


def test_shard_dropout_is_reproducible(lm):
    """LoRA dropout in shards draws from a generator per shard seeded from torch's: the same seed
    gives the same gradients whatever order the worker threads run in; outside shards it draws what
    nn.Dropout draws."""
    from peft import get_peft_model

    model, tok = lm
    torch.manual_seed(0)
    m = get_peft_model(model, tuning.lora_config(tuning.TuneConfig(lora_dropout=0.5)))
    assert tuning.use_shard_dropout(m)
    kinds = {type(d).__name__ for mod in m.modules() if isinstance(getattr(mod, "lora_dropout", None),
                                                                     torch.nn.ModuleDict)
             for d in mod.lora_dropout.values()}
    assert kinds == {"WorkerDropout"}
    for p in m.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.1)
    m.train()
    params = [p for p in m.parameters() if p.requires_grad]
    loss_of, b = _loss_of(m, scoring.answer_token_ids(tok)[0]), _batch(tok, SHARD_PROMPTS)
    runs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        tuning.backward_in_shards(loss_of, b, params, total=2)
        runs.append(_lora_grads(m))
        m.zero_grad(set_to_none=True)
    assert all(torch.equal(a, c) for a, c in zip(runs[0], runs[1]))
    assert not all(torch.equal(a, c) for a, c in zip(runs[0], runs[2]))  # dropout is on
    drop = next(d for mod in m.modules() if isinstance(getattr(mod, "lora_dropout", None), torch.nn.ModuleDict)
                for d in mod.lora_dropout.values())
    x = torch.ones(4, 16)
    torch.manual_seed(3)
    ours = drop(x)
    torch.manual_seed(3)
    assert torch.equal(ours, torch.nn.Dropout(0.5).train()(x))


def test_shard_helpers_reject_bad_input(lm):
    model, _ = lm
    with pytest.raises(TypeError, match="model must be"):
        tuning.use_shard_dropout("not a model")
    with pytest.raises(ValueError, match="inputs must hold"):
        tuning.shard_batch({"input_ids": torch.ones(2, 3)}, 2)
    with pytest.raises(ValueError, match="inputs must hold"):
        tuning.backward_in_shards(lambda b: b, {"attention_mask": torch.ones(2, 3)}, list(model.parameters()))


def test_shard_dropout_declines_a_model_with_its_own_dropout(tiny):
    from peft import get_peft_model

    model, _ = scoring.load_llm(str(tiny), dtype="float32", device="cpu")
    model.config.attention_dropout = 0.1
    assert not tuning.use_shard_dropout(get_peft_model(model, tuning.lora_config(tuning.TuneConfig())))


def test_tuning_steps_run_in_shards_on_a_cpu(tiny, tmp_path, monkeypatch):
    """With more than one torch thread the Trainer's steps go through backward_in_shards; with one
    they take the stock step. Both learn."""
    calls = []
    real = tuning.backward_in_shards
    monkeypatch.setattr(tuning, "backward_in_shards", lambda *a, **k: calls.append(1) or real(*a, **k))
    _, tok = scoring.load_llm(str(tiny), dtype="float32", device="cpu")
    tr, va = prompt_set(tok, 32), prompt_set(tok, 16, seed=1)
    cfg = tuning.TuneConfig(lr=1e-2, batch_size=4, max_steps=6, eval_steps=6, warmup_steps=0)
    before = torch.get_num_threads()
    try:
        for n_threads, expect_calls in ((2, 6), (1, 0)):
            calls.clear()
            torch.set_num_threads(n_threads)
            model, _ = scoring.load_llm(str(tiny), dtype="float32", device="cpu")
            start = bce_on(model, tok, va)
            res = tuning.tune(model, tok, tr, va, cfg, tmp_path / f"t{n_threads}", progress=False)
            assert len(calls) == expect_calls
            assert bce_on(res.model, tok, va) < start
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("bad", [0, -3, 2.0, True, None])
def test_keep_last_rejects_bad_width(bad):
    with pytest.raises(ValueError, match="width"):
        scoring.keep_last(bad, "cpu")
    assert scoring.keep_last(7, "cpu").tolist() == [6]


def prompt_set(tok, n=48, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    # the label is readable from the prompt, so a few steps can learn it
    ps = [f'#Question: "{"Alpha (1999)" if y else "Beta (2000)"}"? Answer with "Yes" or "No". \n#Answer:'
          for y in labels]
    return tuning.PromptSet(scoring.tokenize(tok, ps), labels, rng.integers(1, 5, n))


def bce_on(model, tok, s):
    y, _ = scoring.answer_token_ids(tok)
    sc = scoring.Scorer(model, tok, batch_size=16)
    yes = torch.tensor(sc.score_ids(s.ids))
    return torch.nn.functional.binary_cross_entropy_with_logits(yes, torch.tensor(s.labels, dtype=torch.float32)).item()


def test_tuning_lowers_loss_and_two_step_continues_adapter(tiny, tmp_path):
    model, tok = scoring.load_llm(str(tiny), dtype="float32", device="cpu")
    tr, va = prompt_set(tok, 48, 0), prompt_set(tok, 24, 1)
    before = bce_on(model, tok, tr)
    cfg = tuning.TuneConfig(lr=5e-2, batch_size=8, max_steps=6, eval_steps=3, warmup_steps=0, patience=5)
    res = tuning.tune(model, tok, tr, va, cfg, tmp_path / "step1", meta={"prompt": "text"}, progress=False)
    after = bce_on(res.model, tok, tr)
    assert after < before
    info = json.loads((res.adapter_dir / "binllm.json").read_text())
    assert info["meta"] == {"prompt": "text"} and len(info["history"]) == 2 and "eval_auc" in info["history"][0]
    # step 2: a fresh base model continues the same adapter
    base2, _ = scoring.load_llm(str(tiny), dtype="float32", device="cpu")
    from peft import PeftModel

    start = PeftModel.from_pretrained(base2, str(res.adapter_dir))
    a1 = {k: v.clone() for k, v in start.state_dict().items() if "lora_" in k}
    base3, _ = scoring.load_llm(str(tiny), dtype="float32", device="cpu")
    res2 = tuning.tune(base3, tok, tr, va, tuning.TuneConfig(lr=1e-3, batch_size=8, max_steps=2, eval_steps=2,
                                                             warmup_steps=0), tmp_path / "step2",
                       init_adapter=res.adapter_dir, progress=False)
    a2 = {k: v for k, v in res2.model.state_dict().items() if "lora_" in k}
    assert a1.keys() == a2.keys()
    diffs = [(a1[k] - a2[k]).abs().max().item() for k in a1]
    assert max(diffs) > 0  # it trained further ...
    assert max(diffs) < 0.05  # ... starting from step 1's weights, not a fresh init
    assert json.loads((res2.adapter_dir / "binllm.json").read_text())["init_adapter"] == str(res.adapter_dir)


def test_continued_adapter_takes_cfg_dropout_and_rejects_another_shape(tiny, tmp_path):
    model, tok = scoring.load_llm(str(tiny), dtype="float32", device="cpu")
    tr, va = prompt_set(tok, 16, 0), prompt_set(tok, 8, 1)
    step1 = tuning.tune(model, tok, tr, va, tuning.TuneConfig(max_steps=1, eval_steps=1, warmup_steps=0,
                                                              lora_dropout=0.05), tmp_path / "s1", progress=False)
    base2, _ = scoring.load_llm(str(tiny), dtype="float32", device="cpu")
    res = tuning.tune(base2, tok, tr, va, tuning.TuneConfig(max_steps=1, eval_steps=1, warmup_steps=0,
                                                            lora_dropout=0.0), tmp_path / "s2",
                      init_adapter=step1.adapter_dir, progress=False)
    drops = [m for n, m in res.model.named_modules() if n.endswith("lora_dropout.default")]
    assert drops and all(isinstance(m, torch.nn.Identity) for m in drops)  # peft's p=0 dropout, not 0.05
    with pytest.raises(ValueError, match=r"cfg: .*r 16 vs 8.*target_modules"):
        tuning.check_init_adapter(step1.adapter_dir, tuning.TuneConfig(
            lora_r=16, target_modules=("q_proj", "k_proj", "v_proj", "o_proj")))
    assert tuning.check_init_adapter(step1.adapter_dir, tuning.TuneConfig())["r"] == 8


def test_evaluation_rounds_do_not_change_training(tiny, tmp_path):
    """Validating every 2 or every 4 updates must train the same adapter: an evaluation round
    draws from torch's generator (a DataLoader seed), which used to move later dropout masks."""
    _, tok = scoring.load_llm(str(tiny), dtype="float32", device="cpu")
    tr, va = prompt_set(tok, 32), prompt_set(tok, 16, seed=1)
    at_step4 = []
    for every in (2, 4):
        model, _ = scoring.load_llm(str(tiny), dtype="float32", device="cpu")
        cfg = tuning.TuneConfig(lr=1e-2, batch_size=4, max_steps=4, eval_steps=every, warmup_steps=0,
                                lora_dropout=0.3)
        res = tuning.tune(model, tok, tr, va, cfg, tmp_path / f"every{every}", progress=False)
        assert [h["step"] for h in res.history] == list(range(every, 5, every))
        at_step4.append(res.history[-1]["eval_loss"])
    assert at_step4[0] == at_step4[1]


def test_tuning_resumes_from_checkpoint(tiny, tmp_path):
    model, tok = scoring.load_llm(str(tiny), dtype="float32", device="cpu")
    tr, va = prompt_set(tok, 32, 0), prompt_set(tok, 16, 1)
    cfg = tuning.TuneConfig(lr=1e-2, batch_size=8, max_steps=2, eval_steps=2, warmup_steps=0)
    tuning.tune(model, tok, tr, va, cfg, tmp_path, progress=False)
    assert (tmp_path / "checkpoints" / "checkpoint-2").is_dir()
    model, tok = scoring.load_llm(str(tiny), dtype="float32", device="cpu")
    cfg4 = tuning.TuneConfig(lr=1e-2, batch_size=8, max_steps=4, eval_steps=2, warmup_steps=0)
    res = tuning.tune(model, tok, tr, va, cfg4, tmp_path, progress=False)
    steps = [h["step"] for h in res.history]
    assert steps == [2, 4]  # step 2's evaluation came from the checkpoint, only steps 3-4 ran again


def test_tune_config_and_empty_sets():
    with pytest.raises(ValueError, match="loss must be"):
        tuning.TuneConfig(loss="mse")
    with pytest.raises(ValueError, match="a prompt set is empty"):
        tuning.PromptSet([], np.zeros(0), np.zeros(0))


DDP_SCRIPT = r'''
import os, sys, json, numpy as np, torch
sys.path.insert(0, sys.argv[2])
from binllm import scoring, tuning
folder, out = sys.argv[1], sys.argv[3]
model, tok = scoring.load_llm(folder, dtype="float32", device="cpu")
rng = np.random.default_rng(0)
labels = rng.integers(0, 2, 32)
ps = [f'"{"Alpha (1999)" if l else "Beta (2000)"}"? Answer with "Yes" or "No". \n#Answer:' for l in labels]
s = tuning.PromptSet(scoring.tokenize(tok, ps), labels, rng.integers(1, 4, 32))
cfg = tuning.TuneConfig(lr=1e-2, batch_size=4, max_steps=3, eval_steps=3, warmup_steps=0)
res = tuning.tune(model, tok, s, s, cfg, out, progress=False)
rank = int(os.environ["RANK"])
import torch.distributed as dist
with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump({"world": dist.get_world_size() if dist.is_initialized() else 1,
               "backend": dist.get_backend() if dist.is_initialized() else None,
               "steps": [h["step"] for h in res.history]}, f)
'''


@pytest.mark.distributed
def test_torchrun_two_cpu_processes(tiny, tmp_path):
    script = tmp_path / "ddp_tune.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with socket.socket() as so:  # a free port: parallel test runs must not collide
        so.bind(("127.0.0.1", 0))
        port = str(so.getsockname()[1])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", port,
           str(script), str(tiny), str(Path(__file__).parent), str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=PKG_PARENT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ranks = [json.loads((out / f"rank{k}.json").read_text()) for k in (0, 1)]
    assert all(x["world"] == 2 and x["backend"] == "gloo" and x["steps"] == [3] for x in ranks)
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("adapter")) == ["adapter"]


@pytest.mark.slow
def test_real_smollm2_scores_prompts():
    model, tok = scoring.load_llm("smollm2", device="cpu")
    prep = data.prepare(data.read_ml100k(), "ml-100k")
    b = PromptBuilder(PromptConfig(kind="text"), prep.titles)
    rows = np.flatnonzero(prep.mask("test"))[:8]
    ps, labels = b.for_rows(prep, rows)
    s = scoring.Scorer(model, tok, batch_size=4).score(ps)
    assert s.shape == (8,) and np.isfinite(s).all() and len(set(np.round(s, 3))) > 1


def _padding_share(tiny, tmp_path, group: bool) -> float:
    """Share of padded positions in the training batches tune() builds."""
    model, tok = scoring.load_llm(str(tiny), dtype="float32", device="cpu")
    rng = np.random.default_rng(3)
    n = 400  # the sampler sorts groups of min(n // 32, 50) batches: 12 here
    # prompts of very different lengths, so random batches pad a lot
    ps = [f'#Question: {" ".join(["Alpha (1999)"] * int(k))}? Answer with "Yes" or "No". \n#Answer:'
          for k in rng.integers(1, 12, n)]
    s = tuning.PromptSet(scoring.tokenize(tok, ps), rng.integers(0, 2, n), rng.integers(1, 5, n))
    seen: list[tuple[int, int]] = []
    orig = tuning._Collator.__call__

    def spy(self, batch):
        out = orig(self, batch)
        if out["input_ids"].shape[0] == 8 and len(seen) < 8:  # the training batches come first
            seen.append((int(out["attention_mask"].sum()), out["attention_mask"].numel()))
        return out

    tuning._Collator.__call__ = spy  # type: ignore[method-assign]
    try:
        cfg = tuning.TuneConfig(lr=1e-3, batch_size=8, max_steps=8, eval_steps=8, eval_batch_size=16,
                                warmup_steps=0, group_by_length=group)
        tuning.tune(model, tok, s, tuning.PromptSet(s.ids[:16], s.labels[:16], s.users[:16]), cfg,
                    tmp_path / str(group), progress=False)
    finally:
        tuning._Collator.__call__ = orig  # type: ignore[method-assign]
    assert len(seen) == 8
    return 1 - sum(a for a, _ in seen) / sum(b for _, b in seen)


def test_length_grouped_batches_pad_less(tiny, tmp_path):
    grouped, shuffled = _padding_share(tiny, tmp_path, True), _padding_share(tiny, tmp_path, False)
    assert grouped < 0.5 * shuffled, (grouped, shuffled)


def test_training_attention_override(tiny):
    assert scoring.training_attention("cpu") == "eager" and scoring.training_attention("cuda:0") is None
    model, _ = scoring.load_llm(str(tiny), dtype="float32", device="cpu", attn_implementation="eager")
    assert model.config._attn_implementation == "eager"
    model, _ = scoring.load_llm(str(tiny), dtype="float32", device="cpu")
    assert model.config._attn_implementation != "eager"  # the model's default (sdpa) otherwise


def test_with_adapter_merges_in_float32_and_keeps_scores(tiny, tmp_path):
    """Scoring through a tuned adapter: float32 weights get it merged (plain modules, the same scores to
    1e-4); bf16 weights keep it unmerged (merging would round it)."""
    from peft import PeftModel, get_peft_model

    model, tok = scoring.load_llm(str(tiny), dtype="float32", device="cpu")
    lora = get_peft_model(model, tuning.lora_config(tuning.TuneConfig()))
    for p in lora.parameters():
        if p.requires_grad:  # a tuned adapter is not the zero init
            torch.nn.init.normal_(p, std=0.3)
    lora.save_pretrained(tmp_path / "adapter")
    ps = [f'#Question: A user has given high ratings to the following movies: "Alpha (1999)". {k} Answer with '
          '"Yes" or "No". \n#Answer:' for k in range(10)]
    unmerged = scoring.Scorer(lora, tok, batch_size=4).score(ps)
    base, _ = scoring.load_llm(str(tiny), dtype="float32", device="cpu")
    plain = scoring.Scorer(base, tok, batch_size=4).score(ps)
    merged_model = scoring.with_adapter(base, tmp_path / "adapter")
    assert not isinstance(merged_model, PeftModel) and not merged_model.training
    assert not any("lora" in n for n, _ in merged_model.named_modules())
    merged = scoring.Scorer(merged_model, tok, batch_size=4).score(ps)
    np.testing.assert_allclose(merged, unmerged, rtol=1e-4, atol=1e-4)
    assert np.abs(merged - plain).max() > 1e-3  # the adapter does change the scores
    b16, _ = scoring.load_llm(str(tiny), dtype="bfloat16", device="cpu")
    assert isinstance(scoring.with_adapter(b16, tmp_path / "adapter"), PeftModel)


@pytest.mark.parametrize("flags, fast", [
    ("fpu sse2 avx2 fma", False),                       # AVX2 only (AMD Zen 3): bf16 is emulated
    ("avx2 avx512f avx512_bf16 avx512_vnni", True),     # AMD Zen 4: VDPBF16PS, no AMX
    ("avx2 avx512f amx_bf16 amx_tile", True),           # Intel Sapphire Rapids: AMX
    ("avx512f avx512_bf16x", False),                    # a longer flag name is not the flag
])
def test_fast_bf16_flags(flags, fast):
    assert scoring.fast_bf16_in(flags) is fast


def test_fast_bf16_flags_rejects_a_non_string():
    with pytest.raises(TypeError, match="flags must be a str"):
        scoring.fast_bf16_in(["avx512_bf16"])
