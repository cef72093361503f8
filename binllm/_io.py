"""Atomic writes (temporary provisional version; replaced by the data helper's module)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable


def atomic_save(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        writer(tmp)
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    return p


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_save(path, lambda t: t.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: object) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=1, default=float))
