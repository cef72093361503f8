"""binllm.threads: spec parsing, env/override precedence, and that a stage really
sets (and restores) torch's and the C++ core's thread counts."""
import pytest
import torch

import binllm
from binllm import threads


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    monkeypatch.delenv(threads.ENV_VAR, raising=False)
    threads.set_override(None)
    yield
    threads.set_override(None)


def test_parse_spec():
    assert threads.parse_spec("3") == {k: 3 for k in threads.KINDS}
    assert threads.parse_spec(" hash=1 , llm=2 ") == {"hash": 1, "llm": 2}


@pytest.mark.parametrize("bad", ["", "0", "-1", "two", "hash=0", "hash=1,hash=2", "gpu=1", "hash", "hash=1,",
                                 "1.5", "hash=x"])
def test_parse_spec_rejects(bad):
    with pytest.raises(ValueError, match="spec"):
        threads.parse_spec(bad)


def test_defaults_and_plan():
    p = threads.plan()
    assert set(p) == set(threads.KINDS) and all(v >= 1 for v in p.values())
    assert p["data"] == 1  # the hash stage's count depends on the load at start (tests below)


def test_env_and_override_precedence(monkeypatch):
    monkeypatch.setenv(threads.ENV_VAR, "hash=2,llm=1")
    assert threads.plan()["hash"] == 2 and threads.plan()["llm"] == 1
    threads.set_override("hash=3")
    assert threads.plan()["hash"] == 3 and threads.plan()["llm"] == 1
    assert "--threads" in threads.describe() and threads.ENV_VAR in threads.describe()
    threads.set_override("")
    assert threads.plan()["hash"] == 2


@pytest.mark.parametrize("bad", ["hash=lots", "0", "hash=x", " "])
def test_bad_env_falls_back_and_names_variable(monkeypatch, bad):
    """A bad BINLLM_STAGE_THREADS is a problem to report (as the README says of every variable), not
    an error in every stage: the defaults apply and the problem names the variable."""
    default = threads.plan()
    monkeypatch.setenv(threads.ENV_VAR, bad)
    assert threads.plan() == default
    with threads.stage("hash") as n:
        assert n == default["hash"]
    problems = threads.env_problems()
    assert len(problems) == 1 and problems[0].startswith(f"{threads.ENV_VAR}=") and "using the defaults" in problems[0]
    assert problems[0] in binllm.build_info()["problems"]


def test_bad_override_keeps_previous():
    threads.set_override("llm=2")
    with pytest.raises(ValueError, match="--threads"):
        threads.set_override("llm=0")
    assert threads.plan()["llm"] == 2
    with pytest.raises(TypeError):
        threads.set_override(3)  # type: ignore[arg-type]


def test_stage_sets_and_restores():
    torch.set_num_threads(2)
    binllm.set_num_threads(2)
    threads.set_override("hash=1,kernels=3,llm=2")
    with threads.stage("hash") as n:
        assert n == 1 and torch.get_num_threads() == 1 and binllm.num_threads() == 3
        # a parallel region inside the stage, then a nested stage still switches torch
        torch.randn(256, 256) @ torch.randn(256, 256)
        with threads.stage("llm"):
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2 and binllm.num_threads() == 2
    with pytest.raises(ValueError, match="kind must be one of"):
        with threads.stage("gpu"):
            pass
    with pytest.raises(RuntimeError):
        with threads.stage("hash"):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == 2


def _child(code: str, **env: str) -> str:
    import os
    import subprocess
    import sys

    from conftest import PKG_PARENT

    e = {k: v for k, v in os.environ.items()
         if k not in ("OMP_WAIT_POLICY", threads.SHARED_ENV, "OMP_NUM_THREADS", "LOCAL_WORLD_SIZE")}
    e.update(env, PYTHONPATH=str(PKG_PARENT))
    r = subprocess.run([sys.executable, "-c", code], env=e, cwd=PKG_PARENT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_configure_openmp_decides_from_load_once():
    probe = ("import os; from binllm import threads; threads.others_busy_cores = lambda window_s=0.25: {busy}; "
             "print(threads.configure_openmp(), os.environ.get('OMP_WAIT_POLICY'), threads.plan()['hash'], "
             "os.environ.get('BINLLM_CPU_SHARED'))")
    cores = threads.available_cores()
    assert _child(probe.format(busy=1.5)) == "True PASSIVE 1 1"  # shared CPU: sleep at barriers, 1 hash thread
    assert _child(probe.format(busy=0.1)) == f"True None {cores} 0"  # quiet: torch's defaults
    assert _child(probe.format(busy=None)) == f"True None {cores} 0"  # load unknown: defaults
    # the user's policy wins; the hash stage still goes to 1 thread on a shared CPU
    assert _child(probe.format(busy=1.5), OMP_WAIT_POLICY="ACTIVE") == "True ACTIVE 1 1"
    # torch first: too late for OpenMP's policy, the thread count still follows the load
    assert _child("import torch; " + probe.format(busy=1.5)) == "False None 1 1"
    # a child process inherits the decision and does not measure (the lambda would fail)
    assert _child(probe.format(busy="1 / 0"), BINLLM_CPU_SHARED="1") == "True PASSIVE 1 1"
    assert _child(probe.format(busy="1 / 0"), LOCAL_WORLD_SIZE="2") == f"True None {cores} 0"  # torchrun ranks
    assert _child(probe.format(busy=0.1), OMP_NUM_THREADS="1") == "True None 1 0"  # torchrun's per-rank count


def test_others_busy_cores_sees_a_busy_process():
    import subprocess
    import sys

    hog = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 20: pass"])
    try:
        import time

        time.sleep(0.3)
        busy = threads.others_busy_cores(0.5)
    finally:
        hog.kill()
        hog.wait()
    assert busy is not None and busy >= 0.5, busy


def test_cli_decides_before_torch_and_doctor_reports_it():
    out = _child("import json, contextlib, io, sys\nfrom binllm import cli\nf = io.StringIO()\n"
                 "with contextlib.redirect_stdout(f): cli.main(['doctor', '--json'])\n"
                 "print(json.loads(f.getvalue())['openmp_wait_policy'], 'torch' in sys.modules)")
    assert out.endswith("False") and ("cores busy with other processes at start" in out), out


@pytest.mark.parametrize("bad", [0, -1.0, "0.25", None])
def test_others_busy_cores_rejects_bad_window(bad):
    with pytest.raises(ValueError, match="window_s"):
        threads.others_busy_cores(bad)


@pytest.mark.parametrize("jobs,total,expected", [(8, 2, (2, 1)), (1, 4, (1, 4)), (2, 8, (2, 4)), (3, 8, (3, 2)),
                                                 (0, 2, (1, 2)), (5, 1, (1, 1))])
def test_workers_for(jobs, total, expected):
    assert threads.workers_for(jobs, total) == expected


def test_map_parallel_order_results_and_threads():
    """Pieces run on worker threads with torch at one thread each, results and on_result in item
    order; torch's count comes back afterwards."""
    import threading

    torch.set_num_threads(2)
    seen, names = [], set()

    def fn(x):
        names.add(threading.current_thread().name)
        return x * 10, torch.get_num_threads()

    out = threads.map_parallel(fn, list(range(7)), total=2, on_result=lambda i, r: seen.append((i, r[0])))
    assert [r[0] for r in out] == [x * 10 for x in range(7)] and seen == [(x, x * 10) for x in range(7)]
    assert {r[1] for r in out} == {1} and all(n.startswith("binllm-worker") for n in names)
    assert torch.get_num_threads() == 2
    # one worker (total 1, max_workers 1 or a single item): the calling thread, on `total` torch threads
    # (an explicit total of 1 is honoured for the call, then torch's count comes back)
    main = threading.current_thread().name
    for kw, items, want in (({"total": 1}, [1, 2], 1), ({"total": 2, "max_workers": 1}, [1, 2], 2),
                            ({"total": 2}, [1], 2), ({"max_workers": 1}, [1, 2], 2)):
        names.clear()
        out = threads.map_parallel(fn, items, **kw)
        assert names == {main} and [r[1] for r in out] == [want] * len(items), kw
        assert torch.get_num_threads() == 2
    assert threads.map_parallel(fn, [], total=2) == []


def test_map_parallel_carries_the_callers_torch_modes():
    def modes(_):
        return (torch.is_grad_enabled(), torch.is_inference_mode_enabled(), torch.is_autocast_enabled("cpu"),
                torch.get_autocast_dtype("cpu"))

    with torch.inference_mode():
        assert {m[:3] for m in threads.map_parallel(modes, [0, 1], total=2)} == {(False, True, False)}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert set(threads.map_parallel(modes, [0, 1], total=2)) == {(False, False, True, torch.bfloat16)}
    assert {m[:3] for m in threads.map_parallel(modes, [0, 1], total=2)} == {(True, False, False)}


def test_map_parallel_raises_the_first_error_and_restores():
    torch.set_num_threads(2)

    def fn(x):
        if x in (2, 4):
            raise KeyError(f"piece {x}")
        return x

    with pytest.raises(KeyError, match="piece 2"):
        threads.map_parallel(fn, list(range(6)), total=2)
    assert torch.get_num_threads() == 2
    with pytest.raises(KeyError, match="piece 2"):  # one worker, in the calling thread, on 1 thread
        threads.map_parallel(fn, list(range(6)), total=1)
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("kw", [{"total": 0}, {"total": 1.5}, {"total": True}, {"max_workers": 0},
                                {"max_workers": "2"}])
def test_map_parallel_rejects_bad_counts(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        threads.map_parallel(lambda x: x, [1, 2], **kw)


@pytest.mark.parametrize("jobs,total,name", [(-1, 2, "jobs"), (2.0, 2, "jobs"), (2, 0, "total"), (2, True, "total")])
def test_workers_for_rejects_bad_counts(jobs, total, name):
    with pytest.raises(ValueError, match=name):
        threads.workers_for(jobs, total)
