"""binllm._io: failures leave the old output, temporaries are cleaned, the umask is honoured."""
import json
import os
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

from binllm import _io

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(_io.__file__)))


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_write_text_json_bytes(tmp_path):
    _io.atomic_write_text(tmp_path / "a.txt", "héllo")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo"
    _io.atomic_write_json(tmp_path / "b.json", {"x": np.float32(0.5), "n": 3})
    assert json.loads((tmp_path / "b.json").read_text()) == {"x": 0.5, "n": 3}
    assert (tmp_path / "b.json").read_text().startswith('{\n "x"')  # indent=1
    _io.atomic_write_bytes(tmp_path / "sub" / "c.bin", b"\x00\x01")
    assert (tmp_path / "sub" / "c.bin").read_bytes() == b"\x00\x01"
    assert listing(tmp_path) == ["a.txt", "b.json", "sub"]


def test_failure_mid_write_keeps_old_file_and_removes_temp(tmp_path):
    dest = tmp_path / "out.txt"
    dest.write_text("old")
    seen = []

    def writer(tmp):
        seen.append(tmp)
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        _io.atomic_save(dest, writer)
    assert dest.read_text() == "old"
    assert listing(tmp_path) == ["out.txt"]
    assert seen[0].parent == tmp_path and str(os.getpid()) in seen[0].name and seen[0].suffix == ".txt"

    def interrupted(tmp):
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _io.atomic_save(dest, interrupted)
    assert dest.read_text() == "old" and listing(tmp_path) == ["out.txt"]


def test_writer_that_writes_nothing_and_folder_destination(tmp_path):
    with pytest.raises(ValueError, match="did not create a file"):
        _io.atomic_save(tmp_path / "x.bin", lambda _path: None)
    (tmp_path / "d").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        _io.atomic_write_text(tmp_path / "d", "x")
    assert listing(tmp_path) == ["d"]


@pytest.mark.usefixtures("umask_022")
def test_umask_honoured(tmp_path):
    _io.atomic_write_text(tmp_path / "f.txt", "x")
    with _io.atomic_dir(tmp_path / "folder", kind="test") as d:
        (d / "inner.txt").write_text("y")
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o755
    os.umask(0o077)
    _io.atomic_write_text(tmp_path / "g.txt", "x")
    assert stat.S_IMODE((tmp_path / "g.txt").stat().st_mode) == 0o600


def test_atomic_dir_replaces_and_failure_keeps_old(tmp_path):
    dest = tmp_path / "out"
    with _io.atomic_dir(dest, kind="test") as d:
        (d / "a").write_text("1")
    assert listing(dest) == [_io.OUTPUT_MARKER, "a"]
    with pytest.raises(RuntimeError):
        with _io.atomic_dir(dest, kind="test") as d:
            (d / "b").write_text("2")
            raise RuntimeError("boom")
    assert listing(dest) == [_io.OUTPUT_MARKER, "a"]
    assert listing(tmp_path) == ["out"]
    with _io.atomic_dir(dest, kind="test") as d:
        (d / "c").write_text("3")
    assert listing(dest) == [_io.OUTPUT_MARKER, "c"]
    assert listing(tmp_path) == ["out"]


def test_check_output_path(tmp_path):
    f = tmp_path / "victim.txt"
    f.write_text("important")
    with pytest.raises(ValueError, match="victim.txt exists and is not a folder"):
        _io.check_output_path(f, "prepared")
    with pytest.raises(ValueError, match="victim.txt exists and is not a folder"):
        with _io.atomic_dir(f, kind="prepared"):
            pass
    assert f.read_text() == "important"
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match="photos is an existing folder that is not a binllm prepared output"):
        _io.check_output_path(other, "prepared")
    assert _io.check_output_path(other, "prepared", recognise=lambda p: (p / "cat.jpg").exists()) == other
    with pytest.raises(ValueError, match="is an existing folder; a file path was expected"):
        _io.check_output_path(other, "file")
    assert _io.check_output_path(f, "file") == f
    (tmp_path / "empty").mkdir()
    _io.check_output_path(tmp_path / "empty", "prepared")
    _io.check_output_path(tmp_path / "missing", "prepared")
    with _io.atomic_dir(tmp_path / "h", kind="hash"):
        pass
    with pytest.raises(ValueError, match="not a binllm prepared output"):
        _io.check_output_path(tmp_path / "h", "prepared")
    with pytest.raises(ValueError, match="is not a folder"):
        _io.replace_dir(tmp_path / "h", f)


def test_kill_style_leftovers_cleaned(tmp_path):
    dead = dead_pid()
    dest = tmp_path / "data"
    stale_dir = tmp_path / f".data.binllm-tmp.{dead}.0123abcd"
    stale_dir.mkdir()
    (stale_dir / "rows.parquet").write_bytes(b"partial")
    stale_file = tmp_path / f".data.binllm-tmp.{dead}.89abcdef"
    stale_file.write_bytes(b"partial")
    live = tmp_path / f".data.binllm-tmp.{os.getppid()}.00000000"  # a running process's write
    live.mkdir()
    mine = tmp_path / f".data.binllm-tmp.{os.getpid()}.11111111"
    mine.mkdir()
    foreign = tmp_path / ".data.backup"  # not our pattern
    foreign.mkdir()
    other_name = tmp_path / f".database.binllm-tmp.{dead}.22222222"
    other_name.mkdir()
    with _io.atomic_dir(dest, kind="test") as d:
        (d / "x").write_text("1")
    names = listing(tmp_path)
    assert stale_dir.name not in names and stale_file.name not in names
    assert {live.name, mine.name, foreign.name, other_name.name, "data"} <= set(names)


def test_reused_pid_older_temp_is_cleaned(tmp_path):
    # the pid is alive (our parent) but the temporary predates that process
    temp = tmp_path / f".x.binllm-tmp.{os.getppid()}.33333333"
    temp.write_text("old")
    start = _io.process_start(os.getppid())
    if start is None:
        pytest.skip("no /proc: process start times unknown on this platform")
    os.utime(temp, (start - 100, start - 100))
    assert _io.clean_stale_temps(tmp_path, "x") == [temp]


def test_half_done_swap_restored(tmp_path):
    # killed between moving the old folder aside and renaming the new one in
    dead = dead_pid()
    old = tmp_path / f".out.binllm-old.{dead}.44444444"
    old.mkdir()
    (old / "a").write_text("1")
    _io.clean_stale_temps(tmp_path, "out")
    assert listing(tmp_path) == ["out"] and (tmp_path / "out" / "a").read_text() == "1"


def test_killed_writer_process_leaves_old_file(tmp_path):
    dest = tmp_path / "f.txt"
    dest.write_text("old")
    code = (f"import os, binllm._io as io\n"
            f"def w(p):\n    p.write_text('half')\n    os._exit(9)\n"
            f"io.atomic_save({str(dest)!r}, w)\n")
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": ROOT}, cwd=ROOT)
    assert r.returncode == 9
    assert dest.read_text() == "old" and len(listing(tmp_path)) == 2  # the killed write's temp
    time.sleep(0.01)
    _io.atomic_write_text(dest, "new")
    assert dest.read_text() == "new" and listing(tmp_path) == ["f.txt"]
