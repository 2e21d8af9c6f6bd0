"""Nothing wrong gets out of the sweep chunk store or the compilation cache.

Sweeps sharing a store never mix; a corrupt chunk is recomputed; a dead writer's temporary file is
removed; two identical sweeps at once share the work; throughput counts only what was solved here;
corrupt compilation-cache entries and traced-program exports are rewritten. Every sweep here uses
one tiny scenario, one axis and chunks of two, so they all share one compiled chunk program.
"""

import os
import re
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import replace
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from optimizer import aot, io
from optimizer.schema import AxisConfig, SweepConfig
from optimizer.sweep import chunk_folder, chunk_lock, chunk_path, run_sweep, sweep_key
from tests.scenarios import run_config, segment

ROOT = Path(__file__).resolve().parent.parent
RENTS = (2.0, 3.0, 4.0, 5.0)


def tiny(values=RENTS, resume=True):
    cfg = run_config({"chat": segment(demand="logit", elasticity=1.5)}, gpus=("h100-sxm",))
    axes = {"rent": AxisConfig(path="fleet.price_usd_per_gpu_hour.h100-sxm", values=list(values))}
    return replace(cfg, sweep=SweepConfig(name="tiny", axes=axes, chunk_size=2, resume=resume))


def folder_of(store, cfg):
    return chunk_folder(store, sweep_key(cfg), 2)


class Log(list):
    def __call__(self, msg):
        self.append(msg)

    def solved(self) -> tuple[int, int]:
        """(scenarios solved here, scenarios reused) from the final line."""
        m = re.search(r"(\d+) of \d+ scenarios solved here \((\d+) reused\)", self[-1])
        assert m, self[-1]
        return int(m.group(1)), int(m.group(2))


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The tiny sweep solved once (this compiles the chunk program every other test reuses)."""
    where = tmp_path_factory.mktemp("full")
    log = Log()
    result = run_sweep(tiny(), where / "out", where / "store", log=log)
    assert len(result) == 4 and result["converged"].all() and log.solved() == (4, 0)
    return result, where / "store"


def test_different_sweeps_share_a_store_without_mixing(tmp_path, full):
    ref, _ = full
    store = tmp_path / "store"
    a, b = tiny(), tiny(values=(2.5, 3.0, 4.0, 5.5))
    assert sweep_key(a) != sweep_key(b)
    run_sweep(a, tmp_path / "a", store, log=Log())
    got_b = run_sweep(b, tmp_path / "b", store, log=Log())
    assert list(got_b["rent"]) == [2.5, 3.0, 4.0, 5.5]
    again = Log()
    got_a = run_sweep(a, tmp_path / "a2", store, log=again)  # b left a's chunks alone
    assert again.solved() == (0, 4) and "nothing to solve" in again[-1]
    pd.testing.assert_frame_equal(got_a, ref)
    assert sorted(p.name for p in store.iterdir()) == sorted([folder_of(store, a).name, folder_of(store, b).name])
    assert all((f / "sweep_meta.json").exists() for f in store.iterdir())
    # resume=false recomputes this sweep's chunks only
    fresh = Log()
    pd.testing.assert_frame_equal(run_sweep(tiny(resume=False), tmp_path / "a3", store, log=fresh), ref)
    assert fresh.solved() == (4, 0) and any("deleted 2 stored chunk(s)" in m for m in fresh)
    assert len(list(folder_of(store, b).glob("chunk_*.parquet"))) == 2


def test_corrupt_or_incomplete_chunks_are_recomputed(tmp_path, full):
    ref, _ = full
    store = tmp_path / "store"
    run_sweep(tiny(), tmp_path / "o", store, log=Log())
    folder = folder_of(store, tiny())
    p0, p1 = chunk_path(folder, 0), chunk_path(folder, 1)
    p1.write_bytes(p1.read_bytes()[: p1.stat().st_size // 2])  # truncated Parquet
    io.write_frame(p0, pd.read_parquet(p0).iloc[:1])  # valid Parquet, a row short
    log = Log()
    pd.testing.assert_frame_equal(run_sweep(tiny(), tmp_path / "o", store, log=log), ref)
    assert log.solved() == (4, 0)
    assert any("chunk_00001.parquet is unreadable" in m for m in log)
    assert any("chunk_00000.parquet is incomplete (1 rows, expected 2)" in m for m in log)
    # a chunk of other scenarios (e.g. copied in by hand) is caught too
    io.write_frame(p1, pd.read_parquet(p0))
    log = Log()
    pd.testing.assert_frame_equal(run_sweep(tiny(), tmp_path / "o", store, log=log), ref)
    assert log.solved() == (2, 2) and any("chunk_00001.parquet is not scenarios 2 to 3" in m for m in log)


def test_stale_temporaries_go_live_ones_stay_and_throughput_counts_solved_only(tmp_path, full):
    ref, _ = full
    store = tmp_path / "store"
    part = run_sweep(tiny(), tmp_path / "o", store, stop_after_chunks=1, log=Log())
    assert part.empty
    folder = folder_of(store, tiny())
    dead = folder / ".chunk_00001.parquet.k1ll3d.tmp"  # what a SIGKILL during atomic_write leaves
    dead.write_bytes(b"half a file")
    log = Log()
    pd.testing.assert_frame_equal(run_sweep(tiny(), tmp_path / "o", store, log=log), ref)
    assert not dead.exists() and any("removed 1 temporary file(s)" in m for m in log)
    assert log.solved() == (2, 2)  # the resumed chunk's scenarios are not counted as solved
    rate = float(re.search(r"\(([\d,.]+) scenarios/s", log[-1]).group(1).replace(",", ""))
    assert rate > 0
    # a temporary file whose chunk lock is held belongs to a live writer: it stays
    live = folder / ".chunk_00000.parquet.writing.tmp"
    live.write_bytes(b"being written")
    lock = chunk_lock(folder, 0)
    lock.acquire(timeout=0)
    try:
        log = Log()
        run_sweep(tiny(), tmp_path / "o", store, log=log)
        assert live.exists() and log.solved() == (0, 4)
    finally:
        lock.release()


def test_a_chunk_held_by_another_process_is_waited_for_and_used(tmp_path, full):
    """Simulated other process: the test holds chunks 0 and 2; the sweep solves chunk 1, waits, then
    uses the file the holder wrote for chunk 0 and solves chunk 2, whose holder left without one."""
    values = RENTS + (6.0, 7.0)
    cfg = tiny(values=values)
    ref = run_sweep(cfg, tmp_path / "ref", tmp_path / "ref_store", log=Log())
    store = tmp_path / "store"
    folder = folder_of(store, cfg)
    folder.mkdir(parents=True)
    locks = [chunk_lock(folder, 0), chunk_lock(folder, 2)]
    for lock in locks:
        lock.acquire(timeout=0)
    log, out = Log(), {}
    worker = threading.Thread(target=lambda: out.update(r=run_sweep(cfg, tmp_path / "o", store, log=log)))
    try:
        worker.start()
        deadline = time.time() + 120
        while not chunk_path(folder, 1).exists():
            assert time.time() < deadline and worker.is_alive(), log
            time.sleep(0.02)
        time.sleep(0.2)
        assert worker.is_alive()  # waiting for chunks 0 and 2
        locks[1].release()  # the holder of chunk 2 died without writing it
        theirs = pd.read_parquet(chunk_path(folder_of(tmp_path / "ref_store", cfg), 0))
        theirs.loc[0, "margin_usd_per_day"] = 12345.0  # mark the other process's rows
        io.write_frame(chunk_path(folder, 0), theirs)
    finally:
        locks[0].release()
        worker.join(120)
    got = out["r"]
    assert log.solved() == (4, 2)
    assert got["margin_usd_per_day"][0] == 12345.0  # chunk 0 came from the other process's file
    pd.testing.assert_frame_equal(got.iloc[1:], ref.iloc[1:])


def test_two_identical_sweeps_at_once_solve_each_chunk_once(tmp_path, full):
    cfg = tiny(values=RENTS + (6.0, 7.0, 8.0, 9.0))
    store = tmp_path / "store"
    logs, out = [Log(), Log()], {}
    workers = [threading.Thread(target=lambda i=i: out.update({i: run_sweep(cfg, tmp_path / f"o{i}", store,
                                                                            log=logs[i])}))
               for i in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(240)
    pd.testing.assert_frame_equal(out[0], out[1])
    assert len(out[0]) == 8 and out[0]["converged"].all()
    assert logs[0].solved()[0] + logs[1].solved()[0] == 8  # no chunk solved twice


PROBE = """
import os, sys
os.environ["TOKENMARGIN_JAX_CACHE"] = sys.argv[1]
from optimizer import runtime
runtime.configure()  # float64, the compilation cache and its repair (what the console scripts switch on)
import jax, jax.numpy as jnp
from jax._src import monitoring
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
events = {"hits": 0, "misses": 0}
def count(e, **kw):
    for k in events:
        if e.endswith("/cache_" + k):
            events[k] += 1
monitoring.register_event_listener(count)
def tm_probe(x):
    return jnp.sin(x) @ x.T + 1.0
print(float(jax.jit(tm_probe)(jnp.ones((4, 4))).sum()))
print("EVENTS", events["hits"], events["misses"])
"""


def test_corrupt_compilation_cache_entry_is_rewritten(tmp_path):
    cache = tmp_path / "jax"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}

    def probe():
        r = subprocess.run([sys.executable, "-c", PROBE, str(cache)], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        hits, misses = map(int, re.search(r"EVENTS (\d+) (\d+)", r.stdout).groups())
        return r, hits, misses

    first, _, _ = probe()
    (entry,) = cache.glob("jit_tm_probe-*-cache")
    good = entry.read_bytes()
    entry.write_bytes(good[: len(good) // 2])  # as a process killed mid-write leaves it
    second, _, misses = probe()
    assert misses == 1  # the corrupt entry only, recompiled
    assert "Error reading persistent compilation cache" not in second.stderr  # JAX's warning, replaced by:
    assert re.search(r"JAX compilation cache entry jit_tm_probe-\w+ was unreadable .*removed .* so it is rewritten",
                     second.stderr)
    zlib.decompress(entry.read_bytes())  # a valid entry again
    # Not byte-for-byte the first one: XLA's serialised executable differs by a byte or so between compiles.
    assert abs(len(entry.read_bytes()) - len(good)) < len(good) // 4
    third, hits, misses = probe()
    assert misses == 0 and hits >= 1 and third.stderr.strip() == ""
    assert third.stdout.splitlines()[0] == first.stdout.splitlines()[0]


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_corrupt_program_export_is_rewritten(tmp_path, monkeypatch, damage):
    monkeypatch.setattr(aot, "export_dir", lambda: tmp_path)
    aot.forget()
    f = jax.jit(lambda x: jnp.sin(x) * 2.0 + x.sum())
    x = jnp.arange(3.0)
    aot.exported("probe", f, (x,))
    (path,) = tmp_path.glob("probe-*.xla")
    good = path.read_bytes()
    mid = len(good) // 2
    bad = {"truncate": good[:mid], "flip": good[:mid] + bytes(b ^ 0xFF for b in good[mid:mid + 16]) + good[mid + 16:],
           "garbage": b"not a program"}[damage]
    path.write_bytes(bad)  # "flip" still parses as an export and failed only when called, before the digest
    aot.forget()
    np.testing.assert_allclose(np.asarray(aot.exported("probe", f, (x,))(x)), np.asarray(f(x)), rtol=0, atol=0)
    assert path.read_bytes() == good
    aot.forget()
