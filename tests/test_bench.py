"""`binllm bench`: machine facts and limits, the peer equality rule (a wrong peer is rejected),
the report writers, the command's errors, and a tiny codes suite; the real `--quick` run is slow."""
from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import binllm
from binllm import bench, cli
from binllm.bench import codes, machine, report
from binllm.bench.peers import PeerMismatch, Peers, check_equal, check_topk

from conftest import PKG_PARENT

TINY = codes.Sizes(pack_rows=512, all_queries=16, all_items=300, topk_queries=16, topk_items=300, k=5,
                   text_rows=256, dims=(32, 64), text_dims=(32,), slow_peer_queries=8)


def test_machine_facts_and_limits():
    lim = machine.measure_limits([1], read_bytes=8 << 20)
    f = machine.facts(lim)
    assert f["cpu_variant"] in f["cpu_variants_supported"]
    assert set(f["cpu_variants_supported"]) <= set(f["cpu_variants_compiled"])
    assert f["threads"]["usable"] >= 1
    assert f["versions"]["numpy"] == np.__version__ and f["versions"]["python"]
    assert 0.1 < f["read_bandwidth_GBps"][1] < 10_000
    assert 0.01 < f["popcount_1e9_words_per_s"][1] < 1_000
    assert f["popcount_routes_1e9_words_per_s"][1]["binllm"] > 0
    # d/64 words a pair
    assert lim.popcount_pairs_per_s(128, 1) == pytest.approx(lim.popcount_words_per_s[1] / 2)
    assert any("CPU:" in line for line in machine.summary(f))


def test_limits_never_drop_with_more_threads(monkeypatch):
    """A noisy measurement at more threads must not make the limit lower than at fewer."""
    rates = {1: 10.0, 2: 4.0}
    monkeypatch.setattr(machine, "read_bandwidth", lambda t, *_: rates[t])
    monkeypatch.setattr(machine, "popcount_rates", lambda t: {"binllm": rates[t], "best": rates[t]})
    lim = machine.measure_limits([2, 1])
    assert lim.read_bytes_per_s == {1: 10.0, 2: 10.0} and lim.popcount_words_per_s == {1: 10.0, 2: 10.0}
    assert lim.popcount_routes[2]["binllm"] == 4.0  # the record keeps what was measured


def test_reader_and_writer_touch_every_byte():
    buf = np.arange(1 << 16, dtype=np.uint64)
    for t in (1, 2):
        out = machine.reader(buf, t)()
        total = sum(np.asarray(out).ravel().tolist()) if isinstance(out, list) else int(out)
        assert total == int(buf.sum())
        into = np.zeros((64, 33), np.int32)
        machine.writer(into.shape, np.int32, t, into=into)()
        assert (into.view(np.uint8) == 1).all()  # every byte written
        fresh = machine.writer((7, 5), np.int16, t)()
        assert isinstance(fresh, np.ndarray) and fresh.shape == (7, 5) and (fresh.view(np.uint8) == 1).all()


def test_check_equal_rejects_a_wrong_peer():
    want = np.arange(12, dtype=np.int32).reshape(3, 4)
    check_equal("p", "x", want.astype(np.uint32), want)  # the same values in another dtype pass
    wrong = want.copy()
    wrong[2, 1] += 1
    with pytest.raises(PeerMismatch, match=r"p disagrees with binllm on x: 1 of 12 values differ, first at \(2, 1\)"):
        check_equal("p", "x", wrong, want)
    with pytest.raises(PeerMismatch, match="shape"):
        check_equal("p", "x", want[:2], want)


def test_check_topk_accepts_tie_order_and_rejects_wrong_indices(rng):
    d = 32
    q, it = binllm.pack_signs(rng.standard_normal((4, d))), binllm.pack_signs(rng.standard_normal((50, d)))
    s, i = binllm.topk(q, it, d, 6)
    full = binllm.dot_all(q, it, d)

    def rescore(idx):
        return np.take_along_axis(full, idx, axis=1)

    check_topk("p", "t", s, i, s, 50, rescore)
    # any order among equal scores is fine: reverse the indices inside each run of ties
    j = i.copy()
    for r in range(len(s)):
        for v in np.unique(s[r]):
            m = s[r] == v
            j[r, m] = i[r, m][::-1]
    check_topk("p", "t", s, j, s, 50, rescore)
    bad = i.copy()
    bad[0, 0] = next(c for c in range(50) if full[0, c] != s[0, 0])
    with pytest.raises(PeerMismatch, match="true scores"):
        check_topk("p", "t", s, bad, s, 50, rescore)
    with pytest.raises(PeerMismatch, match="score lists"):
        check_topk("p", "t", s - 2, i, s, 50, rescore)
    with pytest.raises(PeerMismatch, match="outside"):
        check_topk("p", "t", s, i + 50, s, 50, rescore)


def test_missing_peer_is_skipped_with_a_note(monkeypatch):
    monkeypatch.setitem(bench.peers.KNOWN, "nopeer", ("binllm_no_such_module_xyz", "nopeer-pkg"))
    p = Peers(["nopeer"])
    assert p.get("nopeer") is None
    assert p.notes == ["nopeer not installed (pip install nopeer-pkg): its rows are left out"]


def test_bound_by_picks_the_tightest_limit():
    assert report.bound_by(2.0, [("a", 8.0), ("b", 4.0), ("c", None)]) == {"frac_limit": 0.5, "bound": "b"}
    assert report.bound_by(2.0, [("c", None)]) == {}


def test_report_writes_markdown_csv_and_plot(tmp_path):
    rows = [{"impl": "binllm", "rate": 2.5, "unit": "x/s", "frac_limit": 0.5, "bound": "popcount rate"},
            {"impl": "peer", "rate": 1.25, "unit": "x/s"}]
    facts = machine.facts()
    md = report.write_table(tmp_path / "out", "t", rows, ["impl", "rate", "unit", "frac_limit", "bound"], facts,
                            "some notes")
    text = md.read_text()
    assert "| binllm | 2.50 | x/s | 0.5 | popcount rate |" in text and "| peer | 1.25 | x/s |  |  |" in text
    assert text.index("CPU:") < text.index("| impl |") < text.index("Machine facts:")
    assert "Machine facts" not in report.table_text(text) and "some notes" in report.table_text(text)
    with open(tmp_path / "out" / "t.csv", newline="") as f:
        got = list(csv.DictReader(f))
    assert [r["impl"] for r in got] == ["binllm", "peer"] and float(got[0]["frac_limit"]) == 0.5
    if importlib.util.find_spec("matplotlib") is None:
        assert report.bar_plot(tmp_path / "out" / "t.png", rows, "impl", "rate", "t") is None
    else:
        png = report.bar_plot(tmp_path / "out" / "t.png", rows, "impl", "rate", "t")
        assert png is not None and png.read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["t.csv", "t.md"] + (
        ["t.png"] if importlib.util.find_spec("matplotlib") else [])


def test_codes_suite_tiny(tmp_path):
    threads_before = binllm.num_threads()
    md = codes.run(tmp_path, sizes=TINY, threads=[1], name="codes_tiny", progress=False, read_bytes=8 << 20)
    assert binllm.num_threads() == threads_before
    with open(tmp_path / "codes_tiny.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["section"] for r in rows} >= {"pack", "all-pairs", "top-k", "text dotted", "text bits parse"}
    impls = {r["impl"] for r in rows}
    for name in ("binllm pack_signs", "binllm dot_all int32", "binllm topk k=5", "binllm format, out='list'"):
        assert name in impls
    peers = Peers(codes.PEERS)
    expect = {"faiss": "faiss.hammings (into a reused buffer)", "usearch": "usearch search(exact=True, Hamming) k=5",
              "numkong": "numkong hammings_packed", "simsimd": "simsimd cdist", "torch": "torch bf16 matmul"}
    for peer, prefix in expect.items():
        present = any(i.startswith(prefix) for i in impls)
        assert present == (peer in peers.modules), (peer, sorted(impls))
    # every binllm score/top-k row is set against a limit, and rates are positive
    for r in rows:
        assert float(r["rate"]) > 0
        if r["impl"].startswith("binllm") and r["section"] in ("pack", "all-pairs", "top-k"):
            assert float(r["frac_limit"]) > 0 and r["bound"], r
    text = md.read_text()
    assert "popcount rate" in text
    for note in peers.notes:
        assert f"Skipped: {note}." in text
    assert (tmp_path / "codes_tiny.png").exists() == (importlib.util.find_spec("matplotlib") is not None)


def test_codes_suite_fails_on_a_wrong_peer(tmp_path, monkeypatch):
    if not hasattr(np, "bitwise_count"):
        pytest.skip("numpy < 2.0 has no bitwise_count: no numpy all-pairs peer")
    real = codes.numpy_hamming_all

    def wrong(q, items):
        out = real(q, items)
        out[0, 0] += 1
        return out

    monkeypatch.setattr(codes, "numpy_hamming_all", wrong)
    with pytest.raises(PeerMismatch, match="numpy bitwise_count disagrees with binllm on all-pairs Hamming d=32"):
        codes.run(tmp_path, sizes=TINY, threads=[1], sections=("all",), progress=False, read_bytes=8 << 20)
    assert not (tmp_path / "codes.md").exists()


def test_codes_suite_fails_on_a_wrong_installed_library(tmp_path, monkeypatch, capsys):
    """A third-party peer that is installed but disagrees: the command fails loudly (exit 1, one FAIL line)."""
    nk = pytest.importorskip("numkong")
    real = nk.hammings_packed

    def off_by_one(a, b, **kw):
        real(a, b, **kw)
        np.asarray(kw["out"])[-1, -1] += 1

    monkeypatch.setattr(nk, "hammings_packed", off_by_one)
    monkeypatch.setattr(codes, "QUICK", TINY)
    monkeypatch.setattr(machine, "read_bandwidth", lambda *_: 1e10)  # no 1 GB buffer in a unit test
    assert cli.main(["bench", "codes", "--quick", "--out", str(tmp_path), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("binllm bench: FAIL: numkong hammings_packed disagrees with binllm"), err


@pytest.mark.parametrize("argv, message", [
    (["bench", "nope"], "suite must be one of codes, data, hashing, llm; got 'nope'"),
    (["bench", "codes", "--out", "a_file"], "--out a_file exists and is not a folder"),
])
def test_bench_user_mistakes_are_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("x")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err == f"binllm bench: error: {message}"


def test_bench_suite_with_missing_packages_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(bench.SUITES, "llm", ("llm", ("torch", "binllm_no_such_module_xyz"), "llm"))
    assert cli.main(["bench", "llm", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "binllm bench: error: the llm suite needs binllm_no_such_module_xyz (pip install 'binllm[llm]')"


def test_bench_stays_light():
    """Importing binllm.bench (what the CLI does before running a suite) pulls in no suite, torch or peer."""
    heavy = "{'torch', 'faiss', 'pandas', 'numkong', 'usearch', 'binllm.bench.codes'}"
    code = ("import sys, binllm.bench, binllm.bench.peers, binllm.bench.report; "
            f"print(sorted({heavy} & set(sys.modules)))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([PKG_PARENT, os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=PKG_PARENT,
                       env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_bench_codes_quick_command(tmp_path):
    """The issue's bar: `binllm bench codes --quick` in under a minute on 2 cores (here with some margin
    for a shared machine), writing its table, CSV and plot."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([PKG_PARENT, os.environ.get("PYTHONPATH", "")])}
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "binllm", "bench", "codes", "--quick", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=600, cwd=PKG_PARENT, env=env)
    elapsed = time.perf_counter() - t
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[bench codes" in r.stderr and "| section | d | threads |" in r.stdout
    for ext in ("md", "csv") + (("png",) if importlib.util.find_spec("matplotlib") else ()):
        assert (tmp_path / f"codes_quick.{ext}").stat().st_size > 0
    assert elapsed < 90, f"binllm bench codes --quick took {elapsed:.0f}s (goal: 60s on 2 idle cores)"


def test_a_failing_suite_is_not_reported_as_a_user_mistake(tmp_path, monkeypatch):
    """Past the argument checks, an error inside a suite is the benchmark's failure: raised whole (exit 1)."""
    def broken(*_, **__):
        raise ValueError("boom")

    monkeypatch.setattr(codes, "run", broken)
    with pytest.raises(RuntimeError, match="binllm bench codes failed: boom"):
        cli.main(["bench", "codes", "--out", str(tmp_path)])


def _bench_script(name: str):  # noqa: ANN202 - a module loaded from bench/
    # bench/ sits beside tests/ in the repository (the installed package does not carry it)
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", name + ".py")
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    path_before, had_common = list(sys.path), "common" in sys.modules
    try:
        spec.loader.exec_module(mod)  # the script puts bench/ on sys.path for its `common` helpers
    finally:
        sys.path[:] = path_before
        if not had_common:
            sys.modules.pop("common", None)
    return mod


def test_contention_floor_counts_the_threads_a_stage_keeps_busy(monkeypatch):
    """bench_contention compares each stage with the floor for the threads it keeps busy: the data
    protocol is single-threaded, the kernels run on their own threads, the rest on torch's count,
    never more than the cores."""
    mod = _bench_script("bench_contention")
    monkeypatch.setattr(mod.threads, "available_cores", lambda: 4)
    assert mod.stage_threads("data", 4, 4) == 1
    assert mod.stage_threads("kernels", 1, 3) == 3
    assert mod.stage_threads("hash", 1, 4) == 1
    assert mod.stage_threads("llm", 8, 4) == 4
    for var in ("OMP_NUM_THREADS", "BINLLM_NUM_THREADS", mod.threads.ENV_VAR):
        monkeypatch.delenv(var, raising=False)
    assert mod.reference_counts() == [1, 4]
    # a count the user set is measured too (capped at the cores), so every stage row has its floor
    monkeypatch.setenv(mod.threads.ENV_VAR, "llm=2,kernels=9")
    assert mod.reference_counts() == [1, 2, 4]
    monkeypatch.delenv(mod.threads.ENV_VAR)
    monkeypatch.setattr(mod.threads, "available_cores", lambda: 1)
    assert mod.reference_counts() == [1]


def test_contention_reference_work_runs_on_the_asked_workers_and_restores_torch(monkeypatch):
    import torch

    mod = _bench_script("bench_contention")
    before = torch.get_num_threads()
    seen = []
    real = mod.threads.map_parallel

    def spy(fn, items, total=None, **kw):  # noqa: ANN001, ANN202
        seen.append((len(items), total))
        return real(fn, items, total=total, **kw)

    monkeypatch.setattr(mod.threads, "map_parallel", spy)
    assert mod.reference_work(2, quick=True)() == 1
    assert seen == [(8, 2)]
    assert torch.get_num_threads() == before
