"""Prefix-cached Yes/No scoring equals full-prompt scoring, on the tiny in-code Llama (plain and with LoRA)."""
import numpy as np
import pytest
import torch

from binllm.llm import scoring
from binllm.llm.prefix_scoring import PrefixScorer, common_prefix_len

from tiny_llm import make_tiny_llm

HIST = ('#Question: A user has given high ratings to the following movies: "Alpha (1999)", "Beta (2000)". '
        "Additionally, we have information about the user's preferences encoded in the feature 12.200.3.44. "
        "Using all available information, make a prediction about whether the user would enjoy the movie titled ")
TITLES = ["Gamma (1990)", "Alpha (1999)", "Be", "Zeta Omega Long Title With Many Words (2001)", "X", "Beta (2000)",
          "Gamma (1990)"]


def groups_of(tok):
    g1 = [HIST + f'"{t}" with the feature {i}.2.3.4? Answer with "Yes" or "No". \n#Answer:' for i, t in
          enumerate(TITLES)]
    g2 = [f'Leverage "{t}"? Answer with "Yes" or "No". \n#Answer:' for t in TITLES[:4]]  # short shared prefix
    g3 = [HIST + '"Solo (2000)"? \n#Answer:']  # one prompt: prefix = all but its last token
    g4 = ["None Yes", "Gamma None Yes No"]  # nothing shared: the full-prompt path
    return [scoring.tokenize(tok, g) for g in (g1, g2, g3, g4)]


def shared_tiny_llm(tmp_path_factory):
    """One tiny Llama folder per test session, shared by this file and test_recommend.py."""
    folder = tmp_path_factory.getbasetemp() / "tiny_llm_shared"
    if not (folder / "config.json").is_file():
        make_tiny_llm(folder)
    return folder


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return scoring.load_llm(str(shared_tiny_llm(tmp_path_factory)), dtype="float32", device="cpu")


@pytest.mark.parametrize("mode,batch_sizes", [("yes_logit", (2, 64)), ("p_yes", (64,))])
def test_equals_full_prompt_scorer(lm, mode, batch_sizes):
    model, tok = lm
    groups = groups_of(tok)
    assert common_prefix_len(groups[0]) > 40  # the history really is shared
    full = [scoring.Scorer(model, tok, mode=mode, batch_size=3).score_ids(g) for g in groups]
    for bs in batch_sizes:
        ps = PrefixScorer(model, tok, mode=mode, batch_size=bs, min_prefix=1)
        got = ps.score_groups(groups)
        for a, b in zip(full, got):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)
    # the prefix really was run once: fewer tokens than the prompts hold
    assert ps.tokens_run < sum(len(x) for g in groups for x in g) * 0.6
    # flat interface with group labels, prompts of different groups interleaved
    flat = [x for g in groups for x in g]
    lab = np.concatenate([np.full(len(g), k) for k, g in enumerate(groups)])
    perm = np.random.default_rng(0).permutation(len(flat))
    got = PrefixScorer(model, tok, mode=mode, batch_size=4).score_ids([flat[i] for i in perm], lab[perm])
    np.testing.assert_allclose(got, np.concatenate(full)[perm], rtol=1e-4, atol=1e-4)


def test_lora_adapter_is_applied_in_the_prefix_pass(lm):
    from peft import LoraConfig, get_peft_model

    model, tok = lm
    groups = groups_of(tok)[:2]
    base = [scoring.Scorer(model, tok).score_ids(g) for g in groups]
    torch.manual_seed(1)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "k_proj"],
                                                  task_type="CAUSAL_LM"))
    with torch.no_grad():  # LoRA starts as the identity (B = 0): make it change the keys/values of the prefix
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    try:
        full = [scoring.Scorer(peft_model, tok, batch_size=4).score_ids(g) for g in groups]
        got = PrefixScorer(peft_model, tok, batch_size=4).score_groups(groups)
        assert np.abs(full[0] - base[0]).max() > 1e-3  # the adapter matters
        for a, b in zip(full, got):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)
    finally:
        peft_model.unload()  # leaves the module-scoped base model as it was


def test_common_prefix_and_bad_input(lm):
    model, tok = lm
    assert common_prefix_len([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_prefix_len([[5, 6]]) == 2 and common_prefix_len([]) == 0 and common_prefix_len([[1], [2]]) == 0
    ps = PrefixScorer(model, tok)
    with pytest.raises(ValueError, match=r"groups\[1\] has a prompt that tokenized to no tokens"):
        ps.score_groups([[[1, 2]], [[]]])
    with pytest.raises(ValueError, match="group must have one entry per prompt"):
        ps.score_ids([[1, 2]], [0, 1])
    for kw, msg in (({"mode": "logit"}, "mode must be"), ({"batch_size": 0}, "batch_size must be >= 1"),
                    ({"min_prefix": 0}, "min_prefix must be an integer >= 1")):
        with pytest.raises(ValueError, match=msg):
            PrefixScorer(model, tok, **kw)
    assert ps.score_groups([[]])[0].shape == (0,)


def test_collate_left_with_a_prefix_continues_its_positions():
    """One padding path: with prefix=p the mask covers the cached prefix and positions go on from it;
    checked against a hand-written batch."""
    ids, mask, pos = scoring.collate_left([[5, 6, 7], [8]], pad_id=0, prefix=4)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 1]]
    assert pos.tolist() == [[4, 5, 6], [4, 4, 4]]
    ids0, mask0, pos0 = scoring.collate_left([[5, 6, 7], [8]], pad_id=0)
    assert mask0.tolist() == [[1, 1, 1], [0, 0, 1]] and pos0.tolist() == [[0, 1, 2], [0, 0, 0]]
    with pytest.raises(ValueError, match="prefix must be the cached prefix length"):
        scoring.collate_left([[5]], pad_id=0, prefix=-1)
