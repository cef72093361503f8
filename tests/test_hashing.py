"""The hash model: STE gradients, beta schedule, training, checkpoints/resume,
determinism, code books, and that exported codes reproduce the model's scores.
Runs on a small generated dataset (a few thousand rows) so the file takes seconds."""
import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

import binllm
from binllm import data
from binllm.cf import hashing
from binllm.cf.codebook import CodeBook
from binllm.cf.hashing import HashConfig


def synthetic_ratings(n_rows=3000, n_users=60, n_items=80, seed=0):
    """Ratings from a rank-4 taste model, so a hash model can learn something quickly."""
    rng = np.random.default_rng(seed)
    pu, pi = rng.standard_normal((n_users, 4)), rng.standard_normal((n_items, 4))
    u, i = rng.integers(0, n_users, n_rows), rng.integers(0, n_items, n_rows)
    rating = np.where((pu[u] * pi[i]).sum(1) + 0.5 * rng.standard_normal(n_rows) > 0, 5.0, 2.0)
    frame = pd.DataFrame({"user": [f"u{k}" for k in u], "item": [f"i{k}" for k in i], "rating": rating,
                          "timestamp": rng.permutation(n_rows) + 10**9})
    titles = pd.Series([f"item {k}" for k in range(n_items)], index=[f"i{k}" for k in range(n_items)])
    return data.Ratings(frame, titles, "synthetic")


@pytest.fixture(scope="module")
def prep():
    return data.prepare(synthetic_ratings(), data.Protocol("synthetic", label_min=4, split="quantile"))


def test_sign_ste_forward_and_backward():
    x = torch.tensor([-2.0, -0.5, -0.0, 0.0, 0.5, 2.0], requires_grad=True)
    y = hashing.sign_ste(x)
    assert y.tolist() == [-1, -1, 1, 1, 1, 1]
    g = torch.arange(6, dtype=torch.float32)
    y.backward(g)
    assert torch.equal(x.grad, g)  # identity
    x.grad = None
    hashing.sign_ste(x, clip=True).backward(g)
    assert x.grad.tolist() == [0, 1, 2, 3, 4, 0]


def test_ste_passes_gradient_into_projection():
    m = hashing.HashModel(5, 5, 8)
    out = m(torch.tensor([1, 2]), torch.tensor([3, 4]), beta=1.0)
    assert set(out.detach().abs().tolist()) <= set(range(0, 9))
    out.sum().backward()
    assert m.user_proj.weight.grad.abs().sum() > 0 and m.item_emb.weight.grad.abs().sum() > 0


def test_beta_schedule():
    c = HashConfig(beta_step=0.25, beta_every=2)
    assert [c.beta(e) for e in range(12)] == [0, 0, 0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 1, 1, 1, 1]
    assert HashConfig(model="mf").beta(100) == 0.0


def test_mixing_uses_binary_with_probability_beta():
    m = hashing.HashModel(3, 3, 4)
    h = torch.full((1000, 64), 0.3)
    g = torch.Generator().manual_seed(0)
    mixed = m._mix(h, 0.25, g)
    share = (mixed == 1).float().mean().item()
    assert 0.22 < share < 0.28
    assert torch.equal(mixed.unique(), torch.tensor([0.3, 1.0]))


def small_cfg(**kw):
    base = dict(d=32, lr=1e-2, weight_decay=1e-5, batch_size=256, max_epochs=6, beta_step=0.25, patience=50,
                seed=3)
    base.update(kw)
    return HashConfig(**base)


def test_train_learns_and_codes_reproduce_scores(prep, tmp_path):
    res = hashing.train(prep, small_cfg(), tmp_path, progress=False)
    assert res.best_valid_auc > 0.6
    te = hashing.SplitTensors.of(prep, "test")
    model_scores = hashing.predict(res.model, te)
    cb = CodeBook.from_model(res.model, prep, {}, {})
    cb.save(tmp_path / "codes.safetensors")
    back = CodeBook.load(tmp_path / "codes.safetensors")
    packed_scores = back.scores(te.u.numpy(), te.i.numpy())
    np.testing.assert_array_equal(packed_scores, model_scores.astype(np.int32))
    np.testing.assert_array_equal(model_scores, np.round(model_scores))
    back.check_dataset(prep)
    assert back.strings("user", "dotted")[1].count(".") == 3


def test_deterministic_and_resume_equals_uninterrupted(prep, tmp_path):
    cfg = small_cfg(max_epochs=4)
    full = hashing.train(prep, cfg, tmp_path / "a", progress=False)
    again = hashing.train(prep, cfg, tmp_path / "b", progress=False)
    part = hashing.train(prep, cfg, tmp_path / "c", progress=False, max_epochs=2)
    assert part.epochs_run == 2
    resumed = hashing.train(prep, cfg, tmp_path / "c", resume=True, progress=False)
    for other in (again, resumed):
        np.testing.assert_array_equal(full.model.packed_codes("user"), other.model.packed_codes("user"))
        np.testing.assert_array_equal(full.model.packed_codes("item"), other.model.packed_codes("item"))
        assert [h["loss"] for h in full.history] == [h["loss"] for h in other.history]
    with pytest.raises(ValueError, match="another config"):
        hashing.train(prep, dataclasses.replace(cfg, lr=0.5), tmp_path / "c", resume=True, progress=False)


def test_existing_checkpoint_needs_resume(prep, tmp_path):
    cfg = small_cfg(max_epochs=2)
    hashing.train(prep, cfg, tmp_path, progress=False, max_epochs=1)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(hashing.CheckpointExistsError, match="resume=True.*or delete"):
        hashing.train(prep, cfg, tmp_path, progress=False)
    assert issubclass(hashing.CheckpointExistsError, ValueError)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_checkpoint_is_weights_only_and_load_best(prep, tmp_path):
    res = hashing.train(prep, small_cfg(max_epochs=5), tmp_path, progress=False)
    c = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert c["state"]["epoch"] == 5 and HashConfig(**c["config"]) == small_cfg(max_epochs=5)
    best = hashing.load_best(tmp_path)
    np.testing.assert_array_equal(best.packed_codes("item"), res.model.packed_codes("item"))
    te = hashing.SplitTensors.of(prep, "test")
    np.testing.assert_array_equal(hashing.predict(best, te), hashing.predict(res.model, te))
    with pytest.raises(FileNotFoundError, match="no hash-model checkpoint"):
        hashing.load_best(tmp_path / "nothing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "checkpoint.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a readable hash-model checkpoint"):
        hashing.load_best(tmp_path / "bad")


def test_resuming_a_finished_run_trains_nothing(prep, tmp_path):
    cfg = small_cfg(max_epochs=30, patience=1, beta_step=1.0)
    first = hashing.train(prep, cfg, tmp_path, progress=False)
    assert first.epochs_run < 30  # stopped early
    again = hashing.train(prep, cfg, tmp_path, progress=False, resume=True)
    assert again.epochs_run == first.epochs_run and again.history == first.history


def test_log_lines_without_bar_follow_the_tenth_rule_and_quiet_is_silent(prep, capsys):
    """Without a bar (stderr is not a terminal here): one line per tenth of max_epochs and the last
    epoch, through the binllm logger on stderr; progress=False (--quiet) prints no epoch line."""
    hashing.train(prep, small_cfg(max_epochs=3), None, log=True)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "train hash: epoch" in ln]
    assert len(lines) == 3 and "valid_auc" in lines[0] and "bit_entropy" in lines[0]
    assert lines[0].startswith("[binllm ")
    hashing.train(prep, small_cfg(max_epochs=25, patience=100), None, progress=True)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "train hash: epoch" in ln]
    assert [ln.split("epoch ")[1].split("/")[0] for ln in lines] == [str(e) for e in range(2, 26, 2)] + ["25"]
    hashing.train(prep, small_cfg(max_epochs=2), None, progress=False)
    out = capsys.readouterr()
    assert "epoch" not in out.err and "epoch" not in out.out


def test_code_stats():
    codes = np.packbits(np.array([[1, 0, 1, 1], [0, 0, 1, 1], [1, 0, 1, 1], [0, 0, 1, 1]], bool), axis=1)
    s = hashing.code_stats(codes, 4)
    # bit 0: half ones (entropy 1); bits 1-3 constant (0): mean 0.25
    assert s == {"bit_entropy": 0.25, "distinct_codes": 2, "n": 4}
    assert hashing.code_stats(np.zeros((0, 1), np.uint8), 4)["distinct_codes"] == 0
    with pytest.raises(ValueError, match="codes_packed must be a 2-D uint8 array"):
        hashing.code_stats(np.zeros(4, np.uint8), 4)


def test_regularisers():
    cfg = HashConfig(balance_weight=2.0)
    assert hashing._regulariser(cfg, torch.ones(8, 4)).item() == pytest.approx(2.0)
    assert hashing._regulariser(cfg, torch.tensor([[1.0, -1], [-1, 1]])).item() == pytest.approx(0.0)
    dc = HashConfig(decorr_weight=1.0)
    x = torch.randint(0, 2, (4096, 3)).float() * 2 - 1  # independent balanced +-1 bits
    same = torch.cat([x[:, :1], x[:, :1]], 1)
    assert hashing._regulariser(dc, same).item() == pytest.approx(1.0)
    assert hashing._regulariser(dc, torch.ones(8, 3)).item() == pytest.approx(1.0)  # constant bits are penalised
    assert hashing._regulariser(dc, x).item() < 0.01
    with pytest.raises(ValueError, match="balance_weight must be a finite number >= 0"):
        HashConfig(balance_weight=-1)
    with pytest.raises(ValueError, match="decorr_weight"):
        HashConfig(decorr_weight=float("nan"))


def test_regularised_training_runs_and_differs(prep):
    plain = hashing.train(prep, small_cfg(max_epochs=3), None, progress=False, log=False)
    reg = hashing.train(prep, small_cfg(max_epochs=3, balance_weight=1.0, decorr_weight=0.1), None, progress=False,
                        log=False)
    assert np.isfinite(reg.best_valid_auc) and "item_bit_entropy" in reg.history[-1]
    assert [h["loss"] for h in plain.history] != [h["loss"] for h in reg.history]


def test_mf_baseline_config():
    c = HashConfig.mf_baseline(max_epochs=7)
    assert (c.model, c.d, c.lr, c.weight_decay, c.patience, c.max_epochs) == ("mf", 256, 1e-3, 1e-4, 10, 7)
    with pytest.raises(TypeError):
        HashConfig.mf_baseline(nonsense=1)


def test_mf_baseline_trains(prep):
    res = hashing.train(prep, HashConfig(model="mf", d=64, lr=1e-2, weight_decay=1e-4, max_epochs=3), None,
                        progress=False)
    losses = [h["loss"] for h in res.history]
    assert len(losses) == 3 and losses[2] < losses[0] and np.isfinite(res.best_valid_auc)


def test_nan_loss_stops_with_clear_message(prep, tmp_path):
    cfg = small_cfg(max_epochs=3)
    hashing.train(prep, cfg, tmp_path, progress=False, max_epochs=1)
    good = (tmp_path / "checkpoint.pt").read_bytes()
    orig = hashing.HashModel.forward

    def broken(self, u, i, beta=1.0, gen=None):
        return orig(self, u, i, beta, gen) * float("nan")

    hashing.HashModel.forward = broken
    try:
        with pytest.raises(FloatingPointError, match="loss became nan at epoch 1.*last good checkpoint"):
            hashing.train(prep, cfg, tmp_path, resume=True, progress=False)
    finally:
        hashing.HashModel.forward = orig
    assert (tmp_path / "checkpoint.pt").read_bytes() == good


def test_codebook_validation(prep, tmp_path):
    u = np.zeros((3, 4), np.uint8)
    with pytest.raises(ValueError, match="user_codes has 4 bytes per code but d=40 needs 5"):
        CodeBook(u, u, 40, np.array(["", "a", "b"]), np.array(["", "a", "b"]))
    with pytest.raises(ValueError, match="bits set past dimension d=30"):
        CodeBook(np.full((3, 4), 255, np.uint8), u, 30, np.array(["", "a", "b"]), np.array(["", "a", "b"]))
    cb = CodeBook(u, u, 32, np.array(["", "a", "b"], object), np.array(["", "a", "b"], object))
    with pytest.raises(ValueError, match="code book does not match the dataset"):
        cb.check_dataset(prep)
    with pytest.raises(ValueError, match="iids must lie in 0..2"):
        cb.scores(np.array([1]), np.array([7]))
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="is not a safetensors code book"):
        CodeBook.load(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError):
        CodeBook.load(tmp_path / "missing.safetensors")


def test_config_validation():
    with pytest.raises(ValueError, match="model must be"):
        HashConfig(model="lightgcn")
    with pytest.raises(ValueError, match="d must be >= 1"):
        HashConfig(d=0)


def test_empty_split_is_an_error(prep):
    import copy

    p2 = copy.copy(prep)
    p2.rows = prep.rows[prep.rows["flag"] != 0]
    with pytest.raises(ValueError, match="the valid split is empty"):
        hashing.train(p2, small_cfg(), None, progress=False)


def test_bits_balance(prep):
    res = hashing.train(prep, small_cfg(max_epochs=2), None, progress=False)
    bal = binllm.balance(res.model.packed_codes("item")[1:], 32)
    assert bal.shape == (32,) and ((bal >= 0) & (bal <= 1)).all()


# ---------------------------------------------------------------- list objectives (bpr, softmax)


def two_group_ratings(n_users=40, n_items=60, seed=0):
    """Users of group g like items of group g (rating 5) and dislike a few of the other (rating 1):
    the right top-N list of a user is items of the own group."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        own = [i for i in range(n_items) if i % 2 == u % 2]
        other = [i for i in range(n_items) if i % 2 != u % 2]
        for i in rng.choice(own, 16, replace=False):
            rows.append((f"u{u}", f"i{i}", 5.0))
        for i in rng.choice(other, 4, replace=False):
            rows.append((f"u{u}", f"i{i}", 1.0))
    frame = pd.DataFrame(rows, columns=["user", "item", "rating"])
    frame["timestamp"] = rng.permutation(len(frame)) + 10**9
    titles = pd.Series([f"item {k}" for k in range(n_items)], index=[f"i{k}" for k in range(n_items)])
    return data.Ratings(frame, titles, "two groups")


@pytest.fixture(scope="module")
def groups():
    return data.prepare(two_group_ratings(), data.Protocol("two groups", label_min=4, split="quantile"))


def test_list_objective_config():
    c = HashConfig.retrieval_codes()
    assert (c.objective, c.d, c.negatives) == ("softmax", 64, 16) and c.for_lists
    assert not HashConfig().for_lists and HashConfig().objective == "bce"
    for kw, msg in ((dict(objective="ranknet"), "objective must be one of"),
                    (dict(negatives=0), "negatives must be an integer >= 1"),
                    (dict(negatives=2.5), "negatives must be an integer"),
                    (dict(neg_popularity=1.5), r"neg_popularity must be a number in \[0, 1\]"),
                    (dict(temperature=0.0), "temperature must be a finite number > 0"),
                    (dict(temperature=float("inf")), "temperature must be")):
        with pytest.raises(ValueError, match=msg):
            HashConfig(**kw)


@pytest.mark.parametrize("objective", ["bpr", "softmax"])
def test_list_loss_gradient_flows_through_the_ste(groups, objective):
    cfg = HashConfig(objective=objective, d=16, negatives=3, neg_popularity=0.5)
    ld = hashing._ListData(groups, cfg)
    model = hashing.build_model(cfg, groups.n_user_slots, groups.n_item_slots)
    gen = torch.Generator().manual_seed(0)
    loss = ld.loss(model, torch.arange(32), 1.0, gen)  # beta 1: fully binary forward
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    for p in (model.user_proj.weight, model.item_proj.weight, model.user_emb.weight, model.item_emb.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    # negatives are catalogue slots 1.., and never the user's own train positives after the redraw
    # (drawn from 30 other-group items, a second collision is impossible to rule out: check the rate)
    u = ld.u[:2000 % len(ld.u)].repeat(20)
    neg = ld.negatives(u, torch.Generator().manual_seed(1))
    assert neg.min() >= 1 and neg.max() < groups.n_item_slots
    assert ld._is_positive(u, neg).float().mean() < 0.1


@pytest.mark.parametrize("objective", ["bpr", "softmax"])
def test_list_objective_learns_the_known_answer(groups, objective):
    cfg = HashConfig(objective=objective, d=16, lr=1e-2, batch_size=128, max_epochs=40, beta_step=0.05,
                     negatives=4, patience=40, seed=1)
    res = hashing.train(groups, cfg, None, progress=False)
    assert res.select == "valid_ndcg@10" and res.best_valid == res.history[res.best_epoch]["valid_ndcg@10"]
    losses = [h["loss"] for h in res.history]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3])  # the loss falls
    # each user's top 5 of the binary codes are items of the user's own group
    from binllm.cf import retrieval

    m = res.model
    users = np.arange(1, groups.n_user_slots)
    _, idx = retrieval.retrieve_codes(m.packed_codes("user")[users], m.packed_codes("item")[1:], cfg.d, 5)
    user_group = np.array([int(str(x)[1:]) % 2 for x in groups.user_ids[users]])
    item_group = np.array([int(str(x)[1:]) % 2 for x in groups.item_ids[1:]])
    assert (item_group[idx] == user_group[:, None]).mean() > 0.95


def test_list_objective_resume_equals_uninterrupted(groups, tmp_path):
    cfg = HashConfig(objective="softmax", d=8, batch_size=128, max_epochs=6, negatives=2, neg_popularity=0.3)
    full = hashing.train(groups, cfg, tmp_path / "a", progress=False)
    hashing.train(groups, cfg, tmp_path / "b", progress=False, max_epochs=3)
    resumed = hashing.train(groups, cfg, tmp_path / "b", resume=True, progress=False)
    assert [h["loss"] for h in full.history] == [h["loss"] for h in resumed.history]
    np.testing.assert_array_equal(full.model.packed_codes("item"), resumed.model.packed_codes("item"))
