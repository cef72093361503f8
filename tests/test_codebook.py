"""CodeBook files: round trip, code checksum (F22), malformed metadata as ValueError naming the file, umask."""
import json
import os
import stat
import warnings

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from binllm.cf.codebook import CodeBook, codes_checksum


def book(d=13, n_users=4, n_items=6, seed=0):
    rng = np.random.default_rng(seed)
    nb = (d + 7) // 8

    def codes(n):
        bits = rng.integers(0, 2, (n, d), dtype=np.uint8)
        return np.packbits(bits, axis=1)[:, :nb]

    return CodeBook(codes(n_users), codes(n_items), d, np.array([""] + [f"u{k}" for k in range(1, n_users)], object),
                    np.array([""] + [f"i{k}" for k in range(1, n_items)], object), {"lr": 0.01}, {"auc": 0.7})


def header(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return dict(f.metadata())


def rewrite(path, meta=None, tensors=None):
    """Rewrites a code book with changed metadata or tensors (as a corrupting tool would)."""
    t = load_file(str(path))
    m = header(path)
    if meta:
        for k, v in meta.items():
            if v is None:
                m.pop(k, None)
            else:
                m[k] = v
    save_file(tensors or t, str(path), metadata=m)


@pytest.mark.parametrize("d", [1, 8, 13, 64])
def test_roundtrip(tmp_path, d):
    cb = book(d)
    p = cb.save(tmp_path / "cb.safetensors")
    back = CodeBook.load(p)
    assert (back.user_codes == cb.user_codes).all() and (back.item_codes == cb.item_codes).all()
    assert back.d == d and back.config == {"lr": 0.01} and back.metrics == {"auc": 0.7}
    assert header(p)["codes_sha256"] == cb.checksum == codes_checksum(cb.user_codes, cb.item_codes, d)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["cb.safetensors"]


def test_flipped_code_byte_is_detected(tmp_path):
    p = book().save(tmp_path / "cb.safetensors")
    t = load_file(str(p))
    t["item_codes"][3, 0] ^= 0x80  # the first (most significant) bit: still a valid code
    rewrite(p, tensors=t)
    with pytest.raises(ValueError, match=r"cb.safetensors: the code arrays do not match their sha256 checksum"):
        CodeBook.load(p)


def test_same_bytes_other_shape_changes_checksum():
    a = np.zeros((4, 2), np.uint8)
    assert codes_checksum(a, a, 16) != codes_checksum(a.reshape(2, 4)[:, :2].copy(), a, 16)
    assert codes_checksum(a, a, 16) != codes_checksum(a, a, 15)


def test_old_codebook_without_checksum_loads_with_warning(tmp_path):
    cb = book()
    p = cb.save(tmp_path / "cb.safetensors")
    rewrite(p, meta={"codes_sha256": None})
    with pytest.warns(UserWarning, match="without a code checksum"):
        back = CodeBook.load(p)
    assert (back.item_codes == cb.item_codes).all()


@pytest.mark.parametrize("change,match", [
    ({"d": None}, r"metadata lacks \['d'\]"),
    ({"user_ids": None, "config": None}, r"metadata lacks \['user_ids', 'config'\]"),
    ({"d": "thirteen"}, "malformed code book metadata"),
    ({"user_ids": "[not json"}, "malformed code book metadata"),
    ({"metrics": "[1, 2]"}, "malformed code book metadata"),
    ({"item_ids": json.dumps(["", "a"])}, "user_ids/item_ids must have one entry per code row"),
    ({"d": "40"}, "user_codes has 2 bytes per code but d=40 needs 5"),
    ({"d": "0"}, "d must be an integer >= 1"),
    ({"fingerprint": "0" * 64}, "id maps do not match their fingerprint"),
    ({"format": "other"}, "is not a binllm code book"),
])
def test_malformed_metadata_is_a_value_error_naming_the_file(tmp_path, change, match):
    p = book().save(tmp_path / "cb.safetensors")
    rewrite(p, meta=change)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=match) as e:
            CodeBook.load(p)
    assert "cb.safetensors" in str(e.value)


def test_bad_files(tmp_path):
    p = book().save(tmp_path / "cb.safetensors")
    raw = p.read_bytes()
    for name, content in (("trunc.safetensors", raw[: len(raw) // 2]), ("junk.safetensors", b"PK\x03\x04junk"),
                          ("empty.safetensors", b"")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=f"{name} is not a safetensors code book"):
            CodeBook.load(tmp_path / name)
    t = load_file(str(p))
    t["extra"] = np.zeros(1, np.uint8)
    rewrite(p, tensors=t)
    with pytest.raises(ValueError, match="is not a binllm code book"):
        CodeBook.load(p)
    with pytest.raises(FileNotFoundError):
        CodeBook.load(tmp_path / "missing.safetensors")


def test_save_refuses_a_folder_and_keeps_old_file_on_failure(tmp_path, monkeypatch):
    (tmp_path / "dir").mkdir()
    with pytest.raises(ValueError, match="dir is an existing folder; a file path was expected"):
        book().save(tmp_path / "dir")
    p = book(seed=1).save(tmp_path / "cb.safetensors")
    before = p.read_bytes()
    import safetensors.numpy

    def boom(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        book(seed=2).save(p)
    assert p.read_bytes() == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["cb.safetensors", "dir"]


def test_save_honours_umask(tmp_path):
    old = os.umask(0o022)
    try:
        p = book().save(tmp_path / "cb.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o644
