"""File output at the edges: every file is written to a temporary name, then renamed.

A reader therefore sees either the previous complete file or the new complete file, never a
half-written one (``os.replace`` is atomic on POSIX within one filesystem). A run's files are
published as a unit (:func:`publish`): written into a staging folder, the run directory's earlier
outputs moved aside (:func:`retire_outputs`), the new files renamed in, and ``manifest.json``
written last; a directory without a manifest holds no complete result.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
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


def import_writers() -> None:
    """Import the libraries pandas loads on its first parquet and Markdown write (pyarrow, tabulate),
    so a caller can do it in the background while it computes."""
    import pyarrow.parquet  # noqa: F401
    import tabulate  # noqa: F401


def readable_number(x) -> str:
    """A table cell as a colleague reads it: thousands separated and no exponent from 1,000 up
    (``31,545`` rather than ``3.155e+04``), four significant digits below (``387.4``, ``0.0164``),
    whole numbers as such; an empty cell for NaN."""
    if not _is_number(x):
        return "" if x is None else str(x)
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    x = float(x)
    if not np.isfinite(x):
        return "" if np.isnan(x) else str(x)
    short = f"{x:.4g}"
    return f"{x:,.0f}" if abs(float(short)) >= 1000 else short


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def markdown_table(df: pd.DataFrame) -> str:
    """``df`` as a Markdown table: every number by :func:`readable_number`, columns holding numbers
    right-aligned (also where some cells are words, e.g. ``no cap``)."""
    numeric = tuple(any(_is_number(v) for v in df[c]) for c in df.columns)
    cells = pd.DataFrame({c: [readable_number(v) for v in df[c]] for c in df.columns}, columns=df.columns)
    return cells.to_markdown(index=False, disable_numparse=True,
                             colalign=tuple("right" if num else "left" for num in numeric))


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
        return write_text(path, markdown_table(df) + "\n")
    raise ValueError(f"unsupported table format '{suffix}' for {path}; use .csv, .parquet, .json or .md")


MANIFEST = "manifest.json"
"""Written last by :func:`publish`: the run's files with their sizes and SHA-256."""
PREVIOUS = ".previous"
"""Where :func:`retire_outputs` moves a run directory's earlier outputs (never looking current)."""
OUTPUT_PATTERNS = ("plan.csv", "plan.parquet", "plan.json", "plan.md", "fleet.csv", "summary.json", MANIFEST,
                   "demand_margin_vs_price.png", "cost_per_mtok.png", "fleet.png", "heatmap.png", "tornado.png",
                   "sweep.parquet", "axis_effects.csv", "estimate.csv", "predictions.csv", "predictions_before_*.csv",
                   "predictions_after_*.csv", "error_summary.json", "efficiency.yaml", "calibration.json",
                   "config_resolved.yaml")
"""The files tokenmargin's apps write into a run directory (with the files an earlier manifest lists,
the only ones :func:`retire_outputs` moves: a user's own files in the directory stay put)."""


def retire_outputs(outdir: str | Path) -> list[str]:
    """Move the earlier outputs of ``outdir`` into ``outdir/.previous/`` (replacing older ones) so that
    a rerun that fails never leaves an earlier plan beside its own summary; returns the names moved."""
    outdir = Path(outdir)
    listed: list[str] = []
    if (outdir / MANIFEST).is_file():
        try:
            listed = list(json.loads((outdir / MANIFEST).read_text()).get("files", {}))
        except (ValueError, AttributeError):
            listed = []
    old = sorted({p for pat in OUTPUT_PATTERNS for p in outdir.glob(pat) if p.is_file()}
                 | {outdir / n for n in listed if "/" not in n and (outdir / n).is_file()})
    if not old:
        return []
    prev = outdir / PREVIOUS
    shutil.rmtree(prev, ignore_errors=True)
    prev.mkdir()
    for p in old:
        os.replace(p, prev / p.name)
    return [p.name for p in old]


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def publish(outdir: str | Path, write: Callable[[Path], None], status: str) -> list[str]:
    """Write a run's files as a unit: ``write(stage)`` fills a staging folder inside ``outdir``;
    then earlier outputs are retired, the files renamed into ``outdir`` and ``manifest.json``
    written last. On any error the staged and partly moved files are removed and it re-raises, so
    ``outdir`` never holds a mix of two runs or a result without its manifest. Returns the names.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=outdir))
    moved: list[Path] = []
    try:
        write(stage)
        names = sorted(p.name for p in stage.iterdir() if p.is_file() and not p.name.endswith(".tmp"))
        files = {n: {"bytes": (stage / n).stat().st_size, "sha256": _digest(stage / n)} for n in names}
        retire_outputs(outdir)
        for n in names:
            os.replace(stage / n, outdir / n)
            moved.append(outdir / n)
        write_json(outdir / MANIFEST, {"status": status, "complete": True, "files": files,
                                       "written_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        return names
    except BaseException:
        for p in moved:
            p.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def check_finite(df: pd.DataFrame, what: str, blank_ok: tuple[str, ...] = ()) -> pd.DataFrame:
    """``df`` if every numeric cell is finite, else :class:`~optimizer.errors.SolverFailure` naming the columns
    (a NaN or inf is reported, never exported as a result). In the ``blank_ok`` columns an empty cell
    (NaN: "does not apply", e.g. no on-demand rent for a GPU type) is allowed; an inf is not."""
    from optimizer.errors import SolverFailure

    num = df.select_dtypes("number")
    bad = [c for c in num.columns
           if not (np.isfinite(v := num[c].to_numpy(float)) | (np.isnan(v) if c in blank_ok else False)).all()]
    if bad:
        raise SolverFailure(f"{what} has non-finite values (NaN or inf) in {', '.join(map(str, bad[:8]))}"
                            f"{' ...' if len(bad) > 8 else ''}; nothing was exported")
    return df
