"""Recommendation lists over a tiny run folder built here: retrieval with exclusions against
numpy oracles, re-ranking against the full-prompt scorer, output files, evaluation, bad input."""
import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from test_prefix_scoring import shared_tiny_llm

import binllm
from binllm import data, metrics
from binllm import lists as rc
from binllm.cf import hashing
from binllm.cf.codebook import CodeBook
from binllm.llm import scoring, tuning
from binllm.llm.prompts import PromptBuilder, PromptConfig

N_USERS, N_ITEMS = 24, 40


def synthetic_ratings(seed=0):
    """Users and items in two taste groups; each user rates 18 items over time."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(N_USERS):
        for it in rng.choice(N_ITEMS, 18, replace=False):
            like = (u % 2) == (it % 2)
            rows.append((f"U{u + 100}", f"I{it + 500}", float(rng.choice([4, 5]) if like else rng.choice([1, 2])),
                         int(rng.integers(0, 10**6))))
    frame = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])
    titles = pd.Series({f"I{i + 500}": f"Film {i} ({1950 + i})" for i in range(N_ITEMS)})
    return data.Ratings(frame, titles, "synthetic")


def build_run(folder, tiny):
    """A run folder as `binllm run` leaves it: data, code book, MF checkpoint, two adapters."""
    prep = data.prepare(synthetic_ratings(), data.Protocol("synthetic", split="quantile"))
    prep.save(folder / "data")
    hc = hashing.HashConfig(d=16, max_epochs=3, batch_size=64, seed=0)
    res = hashing.train(prep, hc, folder / "hash" / "hash", progress=False)
    cb = CodeBook.from_model(res.model, prep, dataclasses.asdict(hc), {})
    cb.save(folder / "hash" / "codebook.safetensors")
    mc = hashing.HashConfig(model="mf", d=8, max_epochs=2, batch_size=64, seed=0)
    hashing.train(prep, mc, folder / "hash" / "mf", progress=False)
    # the retrieval codes: a wider hash model trained for lists
    rcfg = hashing.HashConfig.retrieval_codes(d=24, max_epochs=3, batch_size=64, negatives=4, seed=0)
    rres = hashing.train(prep, rcfg, folder / "hash" / "retrieval", progress=False)
    uc, ic, d, info = hashing.export_codes(rres.model, prep, dataclasses.replace(rcfg, prior_weight=2.0))
    CodeBook(uc, ic, d, prep.user_ids, prep.item_ids, {**dataclasses.asdict(rcfg), **info}, {}).save(
        folder / "hash" / "retrieval_codebook.safetensors")
    (folder / "run_config.json").write_text(json.dumps({"code_style": "dotted"}))
    # one short tuning (text-only); the BinLLM adapter starts from the same weights with the BinLLM prompt
    # settings in its binllm.json (the tests compare against the full-prompt scorer, not tuned quality)
    rows = np.flatnonzero(prep.mask("train"))[:8]
    base, tok = scoring.load_llm(str(tiny), dtype="float32", device="cpu")
    pc = PromptConfig(kind="text", max_titles=3)
    ps, labels = PromptBuilder(pc, prep.titles).for_rows(prep, rows)
    s = tuning.PromptSet(scoring.tokenize(tok, ps), labels, prep.rows["uid"].to_numpy()[rows])
    meta = {"prompt": dataclasses.asdict(pc), "codebook_fingerprint": None, "model": str(tiny)}
    tuning.tune(base, tok, s, s, tuning.TuneConfig(lr=5e-2, batch_size=8, max_steps=1, eval_steps=1, warmup_steps=0),
                folder / "llm" / "text", meta=meta, progress=False)
    dst = folder / "llm" / "binllm_dotted" / "adapter"
    shutil.copytree(folder / "llm" / "text" / "adapter", dst)
    info = json.loads((dst / "binllm.json").read_text())
    info["meta"] = {"prompt": dataclasses.asdict(PromptConfig(kind="text_codes", max_titles=3)),
                    "codebook_fingerprint": cb.fingerprint, "model": str(tiny)}
    (dst / "binllm.json").write_text(json.dumps(info))
    return folder


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return build_run(tmp_path_factory.mktemp("run"), shared_tiny_llm(tmp_path_factory))


@pytest.fixture(scope="module")
def rec(run_dir):
    return rc.Recommender(run_dir, device="cpu", dtype="float32", progress=False)


# ---------------------------------------------------------------- retrieval


def oracle_topn(scores, excl_sets, n):
    """Best first, ties to the lower index, excluded items skipped; -1 past the end."""
    out = np.full((len(scores), n), -1)
    for r, s in enumerate(scores):
        order = [i for i in np.lexsort((np.arange(len(s)), -s)) if i not in excl_sets[r]]
        out[r, :min(n, len(order))] = order[:n]
    return out


@pytest.mark.parametrize("d,m,n,chunk", [(16, 40, 5, 3), (64, 300, 10, 1000), (9, 12, 12, 4), (64, 1, 3, 2)])
def test_retrieve_codes_matches_oracle(rng, d, m, n, chunk):
    from conftest import random_codes

    q = 11
    u, it = random_codes(rng, q, d), random_codes(rng, m, d)
    if m > 5:
        it[5] = it[2]  # an exact tie: the lower index comes first
    counts = rng.integers(0, min(m, 8) + 1, q)
    counts[0] = 0
    counts[-1] = m  # everything excluded: an empty list
    excl = [rng.choice(m, c, replace=False) for c in counts]
    excl[1] = np.r_[excl[1], excl[1]]  # duplicates are harmless
    off = np.r_[0, np.cumsum([len(e) for e in excl])]
    s, i = rc.retrieve_codes(u, it, d, n, off, np.concatenate(excl), chunk=chunk)
    full = binllm.dot_all(u, it, d)
    want = oracle_topn(full, [set(e) for e in excl], n)
    np.testing.assert_array_equal(i, want)
    np.testing.assert_array_equal(s[i >= 0], np.take_along_axis(full, np.maximum(i, 0), 1)[i >= 0])
    assert (s[i < 0] == np.iinfo(np.int32).min).all() and (i[-1] == -1).all()
    # no exclusions at all
    _, i0 = rc.retrieve_codes(u, it, d, min(n, m))
    np.testing.assert_array_equal(i0, oracle_topn(full, [set()] * q, min(n, m)))


@pytest.mark.parametrize("d,m,n", [(8, 30, 6), (3, 50, 20), (64, 7, 7)])
def test_retrieve_codes_tie_order(rng, d, m, n):
    """Equal scores follow tie_order (here a random permutation), exclusions stay by catalogue index."""
    from conftest import random_codes

    q = 9
    u, it = random_codes(rng, q, d), random_codes(rng, m, d)  # d=3: 4 possible scores, ties everywhere
    order = rng.permutation(m)
    excl = [rng.choice(m, int(c), replace=False) for c in rng.integers(0, 4, q)]
    off = np.r_[0, np.cumsum([len(e) for e in excl])]
    s, i = rc.retrieve_codes(u, it, d, n, off, np.concatenate(excl), chunk=4, tie_order=order)
    full = binllm.dot_all(u, it, d)
    rank = np.empty(m, int)
    rank[order] = np.arange(m)
    for r in range(q):
        want = [j for j in np.lexsort((rank, -full[r])) if j not in set(excl[r])][:n]
        assert i[r, :len(want)].tolist() == want and (i[r, len(want):] == -1).all()
        np.testing.assert_array_equal(s[r, :len(want)], full[r, want])
    # the identity order is the kernel's own: the lower index first
    _, i0 = rc.retrieve_codes(u, it, d, n, off, np.concatenate(excl), tie_order=np.arange(m))
    np.testing.assert_array_equal(i0, rc.retrieve_codes(u, it, d, n, off, np.concatenate(excl))[1])
    for bad in (order[:-1], np.r_[order[:-1], order[0]], order.astype(float)):
        with pytest.raises(ValueError, match="tie_order must be a permutation"):
            rc.retrieve_codes(u, it, d, n, tie_order=bad)


def test_recommender_retrieval(rec):
    slots = rec.user_slots(None)
    assert len(slots) == N_USERS
    assert rec.codes_source == "retrieval" and rec.retrieval_codebook.config["objective"] == "softmax"
    prep = rec.prep
    tr = prep.split("train")
    pop = np.bincount(tr["iid"][tr["label"] == 1], minlength=N_ITEMS + 1)
    for method, cb in (("codes", rec.retrieval_codebook), ("binmf", rec.codebook)):
        lists = rec.retrieve(slots, 10, method)
        assert not lists.backfilled.any()
        for r, u in enumerate(slots):
            seen = set(tr["iid"][tr["uid"] == u])
            got = [x for x in lists.items[r] if x > 0]
            assert not seen & set(got) and len(got) == min(10, N_ITEMS - len(seen))
            sc = cb.scores(np.full(len(got), u), got)
            np.testing.assert_array_equal(lists.retrieval[r, :len(got)], sc)
            rest = sorted(set(range(1, N_ITEMS + 1)) - seen - set(got))
            assert cb.scores(np.full(len(rest), u), rest).max(initial=-99) <= lists.retrieval[r, len(got) - 1]
            # the documented tie order: equal scores by popularity (train positives), then the lower slot
            key = list(zip(-sc, -pop[got], got))
            assert key == sorted(key)
    lists = rec.retrieve(slots, 10)
    cb = rec.retrieval_codebook
    for r, u in enumerate(slots):
        seen = set(tr["iid"][tr["uid"] == u])
        got = [x for x in lists.items[r] if x > 0]
        assert not seen & set(got) and len(got) == min(10, N_ITEMS - len(seen))
        np.testing.assert_array_equal(lists.retrieval[r, :len(got)], cb.scores(np.full(len(got), u), got))
        rest = sorted(set(range(1, N_ITEMS + 1)) - seen - set(got))
        assert cb.scores(np.full(len(rest), u), rest).max(initial=-99) <= lists.retrieval[r, len(got) - 1]
    # MF: float dot products of the MF embeddings, brute force
    uemb, iemb = rc.folder.load_mf(rec.run_dir)
    mf = rec.retrieve(slots[:5], 7, "mf")
    assert mf.backfilled is None
    for r, u in enumerate(slots[:5]):
        s = uemb[u] @ iemb[1:].T
        seen = set(tr["iid"][tr["uid"] == u] - 1)
        want = [i + 1 for i in np.argsort(-s, kind="stable") if i not in seen][:7]
        assert mf.items[r].tolist() == want
    popl = rec.retrieve(slots[:3], 5, "popularity")
    assert (np.diff(pop[popl.items[0]]) <= 0).all()


def test_backfill_for_users_without_interactions(run_dir):
    """A user with no known interaction has an untrained code: code retrieval gives the popularity list."""
    rec = rc.Recommender(run_dir, progress=False)
    slots = rec.user_slots(None)[:4]
    rec.candidates._excl_off = rec.candidates._excl_off.copy()
    # empty the first user's known items (as for a user who only appears in test)
    u = slots[0]
    n_del = rec.candidates._excl_off[u + 1] - rec.candidates._excl_off[u]
    cand = rec.candidates
    cand._excl_items = np.delete(cand._excl_items, np.arange(cand._excl_off[u], cand._excl_off[u + 1]))
    rec.candidates._excl_off[u + 1:] -= n_del
    lists = rec.retrieve(slots, 6)
    assert lists.backfilled.tolist() == [True, False, False, False]
    want = rec.retrieve(slots[:1], 6, "popularity")
    assert lists.items[0].tolist() == want.items[0].tolist()
    np.testing.assert_array_equal(lists.retrieval[0], rec.popularity[want.items[0] - 1])


def test_recommend_files_and_rerank(rec, run_dir, tmp_path):
    users = ["U105", "U100", "U102"]  # raw ids of the input data
    out = rc.recommend(run_dir, tmp_path / "recs.jsonl", users=users, n=8, k=4, progress=False, device="cpu")
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["user"] for x in lines[::4]] == ["U105", "U100", "U102"]
    assert [x["rank"] for x in lines[:4]] == [1, 2, 3, 4]
    slot = rec.user_slots(["U105"])[0]
    first = rec.retrieve(np.array([slot]), 4)
    assert [x["item"] for x in lines[:4]] == [rec.prep.item_ids[i] for i in first.items[0]]
    assert lines[0]["title"] == rec.prep.titles[first.items[0, 0]] and lines[0]["llm_score"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recs.jsonl"]  # no temp file left
    # re-ranking: the final top-k are the candidates with the best Yes-logits of the full-prompt scorer
    for method in ("text", "binllm"):
        out = rc.recommend(run_dir, tmp_path / f"{method}.tsv", users=["U105"], n=8, k=3, rerank=method,
                           fmt="tsv", progress=False, device="cpu", dtype="float32")
        tsv = pd.read_csv(out, sep="\t", dtype={"user": str, "item": str})
        assert list(tsv.columns) == ["user", "rank", "item", "title", "retrieval_score", "llm_score"]
        rr = rec.reranker(method)
        cands = rec.retrieve(np.array([slot]), 8).items[0]
        hist = rec.history(slot, rr.prompt.max_titles)
        prompts = rr.builder.build([slot] * 8, cands, [hist] * 8)
        full = scoring.Scorer(rr.scorer.model, rr.tokenizer).score(prompts)
        want = np.lexsort((np.arange(8), -full))[:3]
        assert tsv["item"].tolist() == [rec.prep.item_ids[cands[j]] for j in want]
        np.testing.assert_allclose(tsv["llm_score"].to_numpy(), full[want], rtol=1e-4, atol=1e-4)
    assert rec.codebook.strings("user")[slot] in prompts[0]  # the BinLLM prompt holds the user code


def test_list_metrics_and_bootstrap():
    items = np.array([[3, 1, 2], [5, 6, 7], [9, -1, -1]])
    off, tg = np.array([0, 2, 3, 4]), np.array([2, 3, 7, 4])
    hr, nd = metrics.list_metrics(items, off, tg, 3)
    np.testing.assert_array_equal(hr, [1, 1, 0])
    d = 1 / np.log2(np.arange(2, 5))
    np.testing.assert_allclose(nd, [(d[0] + d[2]) / (d[0] + d[1]), d[2] / d[0], 0])
    hr1, _ = metrics.list_metrics(items, off, tg, 1)
    np.testing.assert_array_equal(hr1, [1, 0, 0])
    assert rc.list_metrics is metrics.list_metrics
    m, lo, hi = metrics.bootstrap_mean(np.array([0.0, 1.0] * 50), 500, seed=1)
    assert m == 0.5 and lo < 0.5 < hi and hi - lo < 0.3
    assert metrics.bootstrap_mean(np.full(7, 0.25)) == (0.25, 0.25, 0.25)
    # paired: the same users drawn for both; a constant shift has a zero-width interval
    a = np.random.default_rng(0).random(200)
    pd_ = metrics.paired_bootstrap_mean(a + 0.1, a, 300, seed=2)
    assert pd_["diff"] == pytest.approx(0.1) and pd_["diff_lo"] == pytest.approx(0.1)
    assert pd_["diff_hi"] == pytest.approx(0.1) and pd_["share_le0"] == 0.0 and pd_["users"] == 200
    b = metrics.paired_bootstrap_mean(a, a[::-1], 300, seed=2)
    assert b["diff_lo"] < 0 < b["diff_hi"]
    for bad in (np.array([np.nan]), np.zeros((2, 2))):
        with pytest.raises(ValueError, match="values"):
            metrics.bootstrap_mean(bad)
    with pytest.raises(ValueError, match="values_b must have 200 entries"):
        metrics.paired_bootstrap_mean(a, a[:3])
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        metrics.list_metrics(items, off, tg, 0)
    with pytest.raises(ValueError, match="at least k=4 columns"):
        metrics.list_metrics(items, off, tg, 4)
    with pytest.raises(ValueError, match=">= 1 target per user"):
        metrics.list_metrics(items, np.array([0, 2, 2, 4]), tg, 2)


def test_ndcg_equals_sklearn(rng):
    """NDCG@k of binary relevance equals sklearn's ndcg_score on the same lists."""
    from sklearn.metrics import ndcg_score

    q, m, k = 60, 30, 7
    scores = rng.standard_normal((q, m))
    rel = (rng.random((q, m)) < 0.2).astype(float)
    rel[rel.sum(1) == 0, 0] = 1.0
    items = np.argsort(-scores, axis=1, kind="stable")
    off = np.r_[0, np.cumsum(rel.sum(1).astype(int))]
    tg = np.concatenate([np.flatnonzero(r) for r in rel])
    _, nd = metrics.list_metrics(items, off, tg, k)
    want = [ndcg_score(rel[r:r + 1], scores[r:r + 1], k=k) for r in range(q)]
    np.testing.assert_allclose(nd, want, atol=1e-12)


def test_evaluate_lists(run_dir):
    res = rc.evaluate_lists(run_dir, users=None, ks=(2, 5), n=8, rerank_users=2, n_boot=200, progress=False,
                            device="cpu", dtype="float32")
    rows = res["rows"]
    prior_bits = rc.Recommender(run_dir, progress=False).retrieval_codebook.d - 24
    assert prior_bits > 0
    main = f"retrieval codes (24 + {prior_bits} prior bits, softmax)"
    learned = "retrieval codes (24 bits, softmax)"
    names = [rc.POPULARITY_ROW, rc.FLOAT_ROWS["mf"], rc.FLOAT_ROWS["als"], rc.FLOAT_ROWS["bpr"],
             "prompt (BinMF) codes (16 bits, bce)", learned, main, f"{main} on the re-rank users",
             f"{main} + text-only re-rank", f"{main} + BinLLM re-rank"]
    assert list(rows) == names
    assert rows[main]["users"] == res["settings"]["users"] > 2
    assert rows[f"{main} + BinLLM re-rank"]["users"] == 2
    for r in rows.values():
        for key in ("HR@2", "NDCG@2", "HR@5", "NDCG@5"):
            m, lo, hi = r[key]
            assert 0 <= lo <= m <= hi <= 1
        assert r["HR@2"][0] <= r["HR@5"][0]
    diffs = res["differences"]
    best_float = max((rc.FLOAT_ROWS[f] for f in ("mf", "als", "bpr")), key=lambda n: rows[n]["HR@5"][0])
    assert list(diffs) == [f"{main} - {rc.POPULARITY_ROW}", f"{main} - {best_float}",
                           f"{main} - prompt (BinMF) codes (16 bits, bce)", f"{main} - {learned}",
                           f"{main} + text-only re-rank - {main} on the re-rank users",
                           f"{main} + BinLLM re-rank - {main} on the re-rank users",
                           f"{main} + BinLLM re-rank - {main} + text-only re-rank"]
    d = diffs[f"{main} - {rc.POPULARITY_ROW}"]["HR@5"]
    assert d["diff"] == pytest.approx(rows[main]["HR@5"][0] - rows[rc.POPULARITY_ROW]["HR@5"][0])
    assert d["diff_lo"] <= d["diff"] <= d["diff_hi"]
    table = rc.lists_markdown(res)
    assert f"| {main} + text-only re-rank | 2 |" in table and "HR@5" in table and "Paired differences" in table
    sub = rc.evaluate_lists(run_dir, users=5, ks=(5,), n=5, rerank_methods=(), progress=False, anchors=False)
    assert sub["rows"][main]["users"] == 5 and f"{main} + text-only re-rank" not in sub["rows"]
    assert rc.FLOAT_ROWS["als"] not in sub["rows"]


# ---------------------------------------------------------------- bad input


def test_bad_input(run_dir, rec, tmp_path):
    out = tmp_path / "x.jsonl"
    with pytest.raises(ValueError, match=r"users: 2 unknown user id\(s\), e.g. \['nobody', 'U1'\]"):
        rc.recommend(run_dir, out, users=["U100", "nobody", "U1"], progress=False)
    with pytest.raises(TypeError, match="users must be a list of raw user ids"):
        rc.recommend(run_dir, out, users="U100", progress=False)
    with pytest.raises(ValueError, match=r"n must be an integer >= k .*k=10\); got 5"):
        rc.recommend(run_dir, out, n=5, k=10)
    for k in (0, -3):
        with pytest.raises(ValueError, match=f"k must be an integer >= 1; got {k}"):
            rc.recommend(run_dir, out, k=k)
    with pytest.raises(ValueError, match="fmt must be one of"):
        rc.recommend(run_dir, out, fmt="csv")
    with pytest.raises(ValueError, match="rerank must be None or one of"):
        rc.recommend(run_dir, out, rerank="gpt", progress=False)
    with pytest.raises(ValueError, match="ks must be a non-empty"):
        rc.evaluate_lists(run_dir, ks=(0, 5))
    with pytest.raises(ValueError, match="users must be None .* or a sample size"):
        rc.evaluate_lists(run_dir, users=0)
    with pytest.raises(ValueError, match="codes must be one of"):
        rc.recommend(run_dir, out, codes="best", progress=False)
    with pytest.raises(ValueError, match="method must be one of"):
        rec.retrieve(np.array([1]), 5, "faiss")
    assert not out.exists()
    # run folders with parts missing or mismatched
    broken = tmp_path / "run"
    shutil.copytree(run_dir / "data", broken / "data")
    with pytest.raises(ValueError, match=r"run_dir .*run has no code book"):
        rc.recommend(broken, out, progress=False)
    with pytest.raises(ValueError, match="is not a folder"):
        rc.Recommender(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="has no prepared dataset"):
        rc.Recommender(tmp_path)
    (broken / "hash").mkdir()
    shutil.copy(run_dir / "hash" / "codebook.safetensors", broken / "hash" / "codebook.safetensors")
    r2 = rc.Recommender(broken, progress=False)
    # an older run folder without retrieval codes: retrieval falls back to the prompt code book ...
    assert r2.codes_source == "prompt" and r2.retrieval_codebook is r2.codebook
    # ... unless the retrieval codes are asked for by name
    with pytest.raises(ValueError, match=r"codes='retrieval': run_dir .* has no retrieval code book"):
        rc.Recommender(broken, progress=False, codes="retrieval")
    assert r2.recommend(["U100"], n=5, k=5).items.shape == (1, 5)  # retrieval needs no adapter ...
    for method in ("text", "binllm"):  # ... re-ranking does
        with pytest.raises(ValueError, match=f"rerank='{method}': run_dir .* has no tuned adapter"):
            rc.recommend(broken, out, users=["U100"], rerank=method, progress=False)
    with pytest.raises(ValueError, match="run_dir .* has no MF checkpoint"):
        r2.retrieve(np.array([1]), 5, "mf")
    cb = rec.codebook
    other = CodeBook(cb.user_codes, cb.item_codes, cb.d, cb.user_ids.copy(), cb.item_ids.copy())
    other.item_ids[1] = "another item"
    other.save(broken / "hash" / "codebook.safetensors")
    with pytest.raises(ValueError, match=r"run_dir .*: code book does not match the dataset"):
        rc.recommend(broken, out, progress=False)
    # an adapter tuned with another code book
    shutil.copy(run_dir / "hash" / "codebook.safetensors", broken / "hash" / "codebook.safetensors")
    shutil.copytree(run_dir / "llm" / "binllm_dotted" / "adapter", broken / "llm" / "binllm_dotted" / "adapter")
    info_path = broken / "llm" / "binllm_dotted" / "adapter" / "binllm.json"
    info = json.loads(info_path.read_text())
    info["meta"]["codebook_fingerprint"] = "0" * 64
    info_path.write_text(json.dumps(info))
    with pytest.raises(ValueError, match="rerank='binllm': the adapter .* was tuned with another code book"):
        rc.recommend(broken, out, users=["U100"], rerank="binllm", progress=False)
    assert not out.exists()
