"""The command line end to end on a small generated ML-1M-format dataset and a tiny in-code Llama:
every stage command, skipping finished stages, error exits as one line, and a 2-process torchrun."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from binllm import cli
from binllm.run import stages
from binllm.run.pipeline import RunConfig

from conftest import PKG_PARENT
from tiny_llm import make_tiny_llm

ROOT = Path(__file__).resolve().parents[1]


def write_ml1m(folder: Path, n_users: int = 40, n_items: int = 50, seed: int = 0) -> Path:
    """ML-1M files (ratings.dat, movies.dat) whose ratings follow two taste groups, with
    timestamps over 34 months from April 2000 so every split period of the protocol has rows."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    start = datetime(2000, 4, 2, tzinfo=timezone.utc).timestamp()
    lines = []
    group_u = rng.integers(0, 2, n_users)
    group_i = rng.integers(0, 2, n_items)
    for u in range(n_users):
        items = rng.choice(n_items, size=int(rng.integers(20, 35)), replace=False)
        times = np.sort(rng.uniform(0, 34 * 30.4 * 86400, len(items)))
        for it, t in zip(items, times):
            like = (group_u[u] == group_i[it]) ^ (rng.random() < 0.15)
            rating = int(rng.integers(4, 6)) if like else int(rng.integers(1, 4))
            lines.append(f"{u + 1}::{it + 1}::{rating}::{int(start + t)}")
    (folder / "ratings.dat").write_text("\n".join(lines) + "\n", encoding="latin-1")
    (folder / "movies.dat").write_text(
        "\n".join(f"{i + 1}::Movie {i + 1} ({1990 + i % 10})::Drama" for i in range(n_items)) + "\n",
        encoding="latin-1")
    return folder


def run_cli(*argv: str) -> int:
    return cli.main([str(a) for a in argv])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_llm(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("cli")
    src = write_ml1m(base / "ml-1m")
    assert run_cli("prepare", "--source", "ml-1m", "--path", src, "--out", base / "data", "--quiet") == 0
    return base / "data"


@pytest.fixture(scope="module")
def pretrained(prepared: Path) -> Path:
    out = prepared.parent / "hash"
    assert run_cli("pretrain", "--data", prepared, "--out", out, "--max-epochs", 4, "--d", 16, "--mf",
                   "--mf-max-epochs", 2, "--mf-d", 8, "--quiet") == 0
    return out


def test_doctor_json(capsys):
    assert run_cli("doctor", "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["cpu_variant"] in info["cpu_variants_supported"]
    assert isinstance(info["stage_threads"], dict) and info["stage_threads"]


def test_doctor_stays_light():
    """doctor answers without importing torch or pandas (it is the first thing to run when something is off)."""
    code = ("import sys; from binllm import cli; cli.main(['doctor']); "
            "print(sorted({'torch', 'pandas'} & set(sys.modules)))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([PKG_PARENT, os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=PKG_PARENT,
                       env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_prepare_skips_existing(prepared: Path, capsys):
    before = (prepared / "rows.parquet").stat().st_mtime_ns
    assert run_cli("prepare", "--source", "ml-1m", "--path", prepared.parent / "ml-1m", "--out", prepared) == 0
    assert "skipped" in capsys.readouterr().out
    assert (prepared / "rows.parquet").stat().st_mtime_ns == before


@pytest.mark.parametrize("argv, message", [
    (["prepare", "--source", "table", "--path", "nope.csv", "--columns", "user,item,rating,timestamp"], "nope.csv"),
    (["prepare", "--source", "table", "--path", "x.csv"], "columns"),
    (["prepare", "--source", "reference"], "path"),
    (["pretrain", "--data", "no-such-folder"], "no-such-folder"),
    (["run", "--bits", "12"], "bits must be a multiple of 8"),
    (["run", "--device", "cuda:7"], "device"),
    (["run", "--device", "tpu"], "device"),
    (["run", "--test-rows", "0"], "test_rows"),
    (["run", "--data", "no-such-folder"], "not a prepared dataset"),
    (["run", "--model", "no-such-model"], "config.json"),
    (["evaluate", "--data", "no-such-folder", "a.npz"], "no-such-folder"),
    (["encode", "--codebook", "missing.safetensors"], "missing.safetensors"),
])
def test_user_mistakes_are_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(f"binllm {argv[0]}: error:") and message in err, err


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="bits"):
        run_cli("run", "--bits", "12", "--debug")


def test_pretrain_skips_and_refuses_other_settings(pretrained: Path, prepared: Path, capsys):
    assert (pretrained / "codebook.safetensors").is_file()
    m = json.loads((pretrained / "metrics.json").read_text())
    assert 0 <= m["hash"]["auc"] <= 1 and 0 <= m["mf"]["auc"] <= 1
    capsys.readouterr()
    assert run_cli("pretrain", "--data", prepared, "--out", pretrained, "--max-epochs", 4, "--d", 16, "--mf",
                   "--mf-max-epochs", 2, "--mf-d", 8) == 0
    assert "skipped" in capsys.readouterr().out
    assert run_cli("pretrain", "--data", prepared, "--out", pretrained, "--max-epochs", 4, "--d", 24) == 2
    assert "other settings" in capsys.readouterr().err
    assert run_cli("pretrain", "--data", prepared, "--out", pretrained, "--objective", "ranknet") == 2
    assert "objective must be one of ('bce', 'bpr', 'softmax')" in capsys.readouterr().err


def test_pretrain_retrieval_codes_flags(prepared: Path, tmp_path, capsys):
    out = tmp_path / "h"
    assert run_cli("pretrain", "--data", prepared, "--out", out, "--max-epochs", 2, "--d", 16, "--retrieval",
                   "--retrieval-d", 24, "--retrieval-max-epochs", 2, "--retrieval-negatives", 2) == 0
    assert "retrieval codes" in capsys.readouterr().out
    from binllm.cf.codebook import CodeBook

    cb = CodeBook.load(out / "retrieval_codebook.safetensors")
    assert (cb.config["learned_bits"], cb.config["objective"], cb.config["negatives"]) == (24, "softmax", 2)
    assert cb.d == 24 + cb.config["prior_bits"]  # + the popularity-prior bits chosen on valid


def test_encode(pretrained: Path, tmp_path):
    out = tmp_path / "codes.tsv"
    assert run_cli("encode", "--codebook", pretrained / "codebook.safetensors", "--out", out) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "side\tslot\tid\tcode" and len(lines) > 10
    assert all(len(x.split("\t")[3].split(".")) == 2 for x in lines[1:])  # 16 bits -> two dotted numbers
    assert run_cli("encode", "--codebook", pretrained / "codebook.safetensors", "--out", tmp_path) == 2
    assert not list(tmp_path.glob("*.tmp"))


def test_stage_commands_tune_score_evaluate(pretrained: Path, prepared: Path, tiny: Path, tmp_path, capsys):
    cb = pretrained / "codebook.safetensors"
    common = ["--data", prepared, "--model", tiny, "--dtype", "float32", "--device", "cpu", "--quiet"]
    tune = ["--max-steps", 4, "--eval-steps", 2, "--batch-size", 4, "--train-rows", 40, "--valid-rows", 20,
            "--max-titles", 3]
    assert run_cli("tune", *common, "--out", tmp_path / "text", "--kind", "text", *tune) == 0
    text_adapter = tmp_path / "text" / "adapter"
    info = json.loads((text_adapter / "binllm.json").read_text())
    assert info["meta"]["prompt"]["kind"] == "text" and info["meta"]["prompt"]["domain"] == "movie"
    assert not (tmp_path / "text" / "checkpoints").exists()  # removed once the adapter is final
    assert run_cli("tune", *common, "--out", tmp_path / "codes", "--kind", "text_codes", "--codebook", cb,
                   "--init-adapter", text_adapter, "--lr", 1e-3, *tune) == 0
    # text_codes without a code book is a one-line error
    capsys.readouterr()
    assert run_cli("tune", *common, "--out", tmp_path / "x", "--kind", "codes", *tune) == 2
    assert "code book" in capsys.readouterr().err
    files = {}
    for name, extra in (("text", ["--adapter", text_adapter]),
                        ("binllm", ["--adapter", tmp_path / "codes" / "adapter"]),
                        ("binmf", ["--method", "binmf", "--codebook", cb]),
                        ("mf", ["--method", "mf", "--hash-dir", pretrained])):
        f = tmp_path / f"{name}.npz"
        assert run_cli("score", *common, "--out", f, "--rows", 30, *extra) == 0
        files[name] = f
    rows0, s0, meta = stages.read_scores(files["binllm"])
    assert len(rows0) == 30 and np.isfinite(s0).all() and meta["prompt"]["kind"] == "text_codes"
    for f in files.values():
        assert np.array_equal(stages.read_scores(f)[0], rows0)  # every method on the same rows
    # scoring again is skipped and gives the same file
    assert run_cli("score", *common, "--out", files["binllm"], "--rows", 30, "--adapter",
                   tmp_path / "codes" / "adapter") == 0
    assert np.array_equal(stages.read_scores(files["binllm"])[1], s0)
    out = tmp_path / "table"
    assert run_cli("evaluate", "--data", prepared, *(f"{k}={v}" for k, v in files.items()), "--out", out,
                   "--pair", "binllm", "text", "--n-boot", 200) == 0
    md = (out.with_suffix(".md")).read_text()
    assert "binllm - text" in md and "item popularity" in md and "[" in md
    res = json.loads(out.with_suffix(".json").read_text())
    r = res["results"]["binmf"]
    assert r["auc_lo"] <= r["auc"] <= r["auc_hi"]
    assert out.with_suffix(".png").is_file()
    # other rows than the rest: a clear error
    other = tmp_path / "other.npz"
    assert run_cli("score", *common, "--out", other, "--rows", 20, "--method", "popularity") == 0
    capsys.readouterr()
    assert run_cli("evaluate", "--data", prepared, files["text"], other) == 2
    assert "other rows" in capsys.readouterr().err


def test_run_resumes_and_skips_every_stage(prepared: Path, tiny: Path, tmp_path, capsys):
    cfg = dict(out=str(tmp_path / "run"), data=str(prepared), model=str(tiny), dtype="float32", device="cpu",
               bits=16, train_rows=40, valid_rows=20, test_rows=30, step1_steps=2, step2_steps=2, eval_steps=2,
               batch_size=4, hash_epochs=3, n_boot=100, max_titles=3, rerank_users=2)
    argv = ["run"] + [str(x) for k, v in cfg.items() for x in (f"--{k.replace('_', '-')}", v)]
    assert run_cli(*argv) == 0
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(res["results"]) >= {"MF (256-d)", "BinMF (hash model, 16 bits)", "text-only (step 1)",
                                   "BinLLM (dotted)", "item popularity"}
    assert "BinLLM (dotted) - text-only (step 1)" in res["differences"]
    assert res["rows"] == 30
    files = sorted(p for p in (tmp_path / "run").rglob("*") if p.is_file() and "results" not in p.name
                   and p.name != "run_config.json")
    stamps = {p: p.stat().st_mtime_ns for p in files}
    capsys.readouterr()
    assert run_cli(*argv) == 0
    captured = capsys.readouterr()
    assert captured.err.count("skipped") >= 5, captured.err  # progress lines: the binllm logger, on stderr
    assert "[binllm" not in captured.out and captured.out.strip().endswith("results.md")  # stdout: results only
    assert {p: p.stat().st_mtime_ns for p in files} == stamps  # nothing was redone
    lists = (tmp_path / "run" / "lists.md").read_text()
    assert "BinMF" in lists and "NDCG" in lists
    # recommendation lists from the finished run, raw ids out; bad input is one line
    rec = tmp_path / "rec.jsonl"
    assert run_cli("recommend", tmp_path / "run", "--out", rec, "--users", "1,2", "--k", 3, "--n", 5) == 0
    got = [json.loads(x) for x in rec.read_text().splitlines()]
    assert len(got) == 6 and {g["user_id"] if "user_id" in g else g["user"] for g in got} == {"1", "2"}
    capsys.readouterr()
    assert run_cli("recommend", tmp_path / "run", "--out", rec, "--k", 10, "--n", 5) == 2
    assert "Traceback" not in capsys.readouterr().err
    # the same folder with other settings is refused
    argv2 = [a if a != "16" else "24" for a in argv]
    assert run_cli(*argv2) == 2
    assert RunConfig(**{**cfg, "out": "x"}).bits == 16


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
@pytest.mark.usefixtures("pretrained")
def test_torchrun_two_processes_tune_then_score(prepared: Path, tiny: Path, tmp_path):
    """2 gloo processes: both ranks step in tune; sharded scores gathered on rank 0 equal a 1-process run."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([PKG_PARENT, os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    common = ["--data", prepared, "--model", tiny, "--dtype", "float32", "--device", "cpu", "--quiet"]
    tr = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
          "-m", "binllm"]
    r = subprocess.run([*map(str, tr), "tune", *map(str, common), "--out", str(tmp_path / "t"), "--kind", "text",
                        "--max-steps", "3", "--eval-steps", "3", "--batch-size", "2", "--train-rows", "16",
                        "--valid-rows", "8"], env=env, capture_output=True, text=True, timeout=300,
                       cwd=PKG_PARENT)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads((tmp_path / "t" / "adapter" / "binllm.json").read_text())
    assert info["history"] and info["history"][-1]["step"] == 3
    tr[tr.index("--master-port") + 1] = str(_free_port())
    r = subprocess.run([*map(str, tr), "score", *map(str, common), "--out", str(tmp_path / "s2.npz"), "--rows", "11",
                        "--adapter", str(tmp_path / "t" / "adapter")], env=env, capture_output=True, text=True,
                       timeout=300, cwd=PKG_PARENT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert run_cli("score", *common, "--out", tmp_path / "s1.npz", "--rows", 11, "--adapter",
                   tmp_path / "t" / "adapter") == 0
    r2, s2, _ = stages.read_scores(tmp_path / "s2.npz")
    r1, s1, _ = stages.read_scores(tmp_path / "s1.npz")
    assert np.array_equal(r1, r2)
    np.testing.assert_allclose(s2, s1, rtol=1e-4, atol=1e-4)


def test_flags_cover_every_config_field():
    import argparse
    import dataclasses

    from binllm.cf.hashing import HashConfig
    from binllm.llm.prompts import PromptConfig
    from binllm.llm.tuning import TuneConfig

    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="c")
    for name in ("run", "tune", "pretrain"):
        cli._COMMANDS[name][0](sub.add_parser(name))
    flags = {name: {a.dest for a in sp._actions} for name, sp in sub.choices.items()}
    assert {f.name for f in dataclasses.fields(RunConfig)} <= flags["run"]
    assert {f.name for f in dataclasses.fields(TuneConfig)} <= flags["tune"]  # seed via --seed
    assert {f.name for f in dataclasses.fields(PromptConfig)} <= flags["tune"]
    assert {f.name for f in dataclasses.fields(HashConfig)} - {"model"} <= flags["pretrain"]
    # flags default to None: the dataclass is the one source of defaults
    args = p.parse_args(["run"])
    assert all(getattr(args, f.name) is None for f in dataclasses.fields(RunConfig))
