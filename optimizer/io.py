"""File output at the edges: every file is written to a temporary name, then renamed.

A reader therefore sees either the previous complete file or the new complete file, never a
half-written one (``os.replace`` is atomic on POSIX within one filesystem).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import pandas as pd


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then atomically rename ``tmp_path`` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Atomically write a text file."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def _json_default(o: Any):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _clean(o: Any):
    """Replace NaN/inf by None so the JSON is standard."""
    if isinstance(o, float):
        return None if not math.isfinite(o) else o
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def write_json(path: str | Path, obj: Any) -> Path:
    """Atomically write standard JSON (NaN → null)."""
    return write_text(path, json.dumps(_clean(obj), indent=2, default=_json_default) + "\n")


def write_frame(path: str | Path, df: pd.DataFrame) -> Path:
    """Atomically write a DataFrame; the format follows the suffix (.csv, .parquet, .json, .md)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return atomic_write(path, lambda p: df.to_csv(p, index=False))
    if suffix == ".parquet":
        return atomic_write(path, lambda p: df.to_parquet(p, index=False))
    if suffix == ".json":
        return atomic_write(path, lambda p: df.to_json(p, orient="records", indent=2, date_format="iso"))
    if suffix == ".md":
        return write_text(path, df.to_markdown(index=False) + "\n")
    raise ValueError(f"unsupported table format '{suffix}' for {path}; use .csv, .parquet, .json or .md")
