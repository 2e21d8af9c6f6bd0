"""The sweep's chunk store: finished chunks on disk (the unit of resume), one folder per sweep,
a file lock per chunk so processes sharing a store split the work."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

def chunk_folder(store: Path, key: str, chunk: int) -> Path:
    """Where one sweep's chunks live: ``<store>/<sweep_key>-c<chunk>`` (sweeps sharing a store never mix)."""
    return Path(store) / f"{key}-c{chunk}"


def chunk_path(folder: Path, c: int) -> Path:
    """The finished rows of chunk ``c``."""
    return folder / f"chunk_{c:05d}.parquet"


def chunk_lock(folder: Path, c: int):
    """The advisory lock of chunk ``c``: held by the process that solves it until its file is written."""
    from filelock import FileLock

    return FileLock(folder / f"chunk_{c:05d}.lock")


def try_lock(lock) -> bool:
    """Take ``lock`` if it is free now (never waits)."""
    from filelock import Timeout

    try:
        lock.acquire(timeout=0)
    except Timeout:
        return False
    return True


def chunk_problem(df: pd.DataFrame, rows: pd.DataFrame, offset: int) -> str | None:
    """Why a stored chunk is not the rows ``rows`` (scenarios ``offset``...), or None when it is."""
    n = len(rows)
    if len(df) != n:
        return f"incomplete ({len(df)} rows, expected {n})"
    if "scenario" not in df.columns or not np.array_equal(df["scenario"].to_numpy(), np.arange(offset, offset + n)):
        return f"not scenarios {offset} to {offset + n - 1}"
    for col in rows.columns:
        if col not in df.columns or not np.array_equal(df[col].to_numpy(float), rows[col].to_numpy(float),
                                                       equal_nan=True):
            return f"for other values of axis '{col}'"
    return None


def read_chunk(path: Path, rows: pd.DataFrame, offset: int, log: Callable[[str], None]) -> pd.DataFrame | None:
    """A stored chunk's rows; None when it is missing, or invalid (then it is deleted and logged)."""
    try:
        df = pd.read_parquet(path)
        why = chunk_problem(df, rows, offset)
    except FileNotFoundError:
        return None
    except Exception as e:  # truncated or otherwise corrupt Parquet
        why = f"unreadable ({type(e).__name__}: {(str(e).splitlines() or [''])[0]})"
    if why is None:
        return df
    path.unlink(missing_ok=True)
    log(f"sweep chunk {path.parent.name}/{path.name} is {why}; deleted it, recomputing")
    return None


def remove_stale_temporaries(folder: Path, log: Callable[[str], None]) -> int:
    """Delete ``.chunk_*.tmp`` files whose chunk lock is free: left by a process that died while writing
    (a live writer holds the chunk's lock until its file is renamed into place)."""
    n = 0
    for tmp in folder.glob(".chunk_*.tmp"):
        c = tmp.name[len(".chunk_"):].split(".")[0]
        if not c.isdigit():
            continue
        lock = chunk_lock(folder, int(c))
        if try_lock(lock):
            try:
                tmp.unlink(missing_ok=True)
                n += 1
            finally:
                lock.release()
    if n:
        log(f"sweep store {folder}: removed {n} temporary file(s) left by a stopped run")
    return n
