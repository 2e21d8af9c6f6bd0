"""Figures drawn from plain data, by this process or by a helper process beside it."""

import subprocess
import sys

import numpy as np
import pandas as pd

from optimizer import figures
from optimizer.figures import Figure, Helper, draw_all

PNG = b"\x89PNG\r\n\x1a\n"


def some_figures(where):
    fleet = pd.DataFrame({"gpu": ["h100-sxm", "b200", "b200"], "model": ["llama-8b", "llama-70b", "llama-8b"],
                          "precision": ["fp8", "fp4", "fp8"], "gpus": [8.0, 16.0, 4.0]})
    hourly = pd.DataFrame({"period": np.repeat(np.arange(4), 2), "start_hour": np.repeat([0.0, 6.0, 12.0, 18.0], 2),
                           "gpu": ["h100-sxm", "b200"] * 4, "reserved_gpus": 8.0, "on_demand_gpus": [0, 2, 4, 0] * 2,
                           "busy_gpus": 6.0, "gpus": 10.0})
    mults = np.geomspace(0.25, 4.0, 9)
    panels = [{"requests": 1e6 / mults, "margins": 5e4 * np.log1p(mults), "marks": [("rival", 0.8)], "title": "p"}]
    table = pd.DataFrame({"chat": [0.1, 0.3]}, index=["h100-sxm/llama-8b/fp8", "b200/llama-70b/fp4"])
    return [Figure("demand_margin_vs_price", {"multiples": mults, "panels": panels}, where / "a.png"),
            Figure("cost_per_mtok", {"table": table}, where / "b.png"),
            Figure("fleet", {"fleet": fleet}, where / "c.png"),
            Figure("fleet_hourly", {"hourly": hourly, "on_demand_caps": {"b200": [3.0, 3.0, 1.0, 3.0]}}, where / "d.png")]


def test_a_helper_draws_its_share_while_the_run_draws_the_rest(tmp_path):
    todo = some_figures(tmp_path)
    alone = Helper()  # the helper on its own: it writes what it is handed and says so
    assert alone.draw(todo[:2]) and alone.wait() == [todo[0].path, todo[1].path]
    assert alone.proc.returncode == 0 and all(f.path.read_bytes()[:8] == PNG for f in todo[:2])
    assert not todo[2].path.exists()
    for f in todo[:2]:
        f.path.unlink()
    helper = Helper()
    try:
        paths = draw_all(todo, helper, handed={"demand_margin_vs_price", "fleet"})
    finally:
        helper.close()
    assert paths == [f.path for f in todo]
    for p in paths:
        assert p.read_bytes()[:8] == PNG and p.stat().st_size > 5000
    assert helper.proc.returncode == 0


def test_figures_a_dead_helper_did_not_draw_are_drawn_by_the_run(tmp_path):
    todo = some_figures(tmp_path)
    helper = Helper()
    helper.proc.kill()
    helper.proc.wait()
    assert not helper.draw(todo[:1]) and helper.wait() == []
    assert draw_all(todo, helper) == [f.path for f in todo]
    assert all(f.path.read_bytes()[:8] == PNG for f in todo)
    # a helper that takes the figures and then fails: the run draws them after waiting
    broken = Helper()
    broken.draw([Figure("no_such_kind", {}, tmp_path / "x.png")])
    assert broken.wait() == [] and broken.proc.returncode != 0
    for f in todo:
        f.path.unlink()
    failing = Helper()
    failing.close()
    failing.proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.buffer.read(); sys.exit(1)"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert draw_all(todo, failing) == [f.path for f in todo] and failing.proc.returncode == 1
    assert all(f.path.read_bytes()[:8] == PNG for f in todo)


def test_a_helper_draws_batches_as_they_come_and_the_run_only_what_it_did_not(tmp_path):
    """Figures handed early (during the solve) and later are all drawn by the helper, once; the
    run draws the rest, and draws the early ones itself when the helper died after taking them."""
    todo = some_figures(tmp_path)
    helper = Helper()
    try:
        assert helper.draw([todo[1]])  # early: while the solve runs
        while not todo[1].path.exists():  # drawn before anything else is handed
            assert helper.proc.poll() is None
        paths = draw_all(todo, helper, handed={"demand_margin_vs_price"}, early=frozenset({todo[1].path}))
    finally:
        helper.close()
    assert paths == [f.path for f in todo] and helper.proc.returncode == 0
    assert all(f.path.read_bytes()[:8] == PNG for f in todo)
    for f in todo:
        f.path.unlink()
    dead = Helper()
    assert dead.draw([todo[1]])
    dead.proc.kill()
    dead.proc.wait()
    assert not dead.running() and not dead.draw([todo[0]])
    assert draw_all(todo, dead, early=frozenset({todo[1].path})) == [f.path for f in todo]
    assert all(f.path.read_bytes()[:8] == PNG for f in todo)


def test_a_truncated_frame_fails_the_helper_and_the_run_draws(tmp_path):
    todo = some_figures(tmp_path)[:1]
    helper = Helper()
    helper.proc.stdin.write((1000).to_bytes(figures.FRAME_HEADER, "big") + b"short")
    assert helper.wait() == [] and helper.proc.returncode == 1
    assert draw_all(todo, helper) == [todo[0].path] and todo[0].path.read_bytes()[:8] == PNG


def test_an_unused_helper_exits_when_closed():
    helper = Helper()
    helper.close()
    assert helper.proc.poll() is not None
    assert figures.HELPER_FIGURES | figures.EARLY_FIGURES <= set(figures.DRAW)


def test_the_console_run_starts_a_helper_only_where_a_single_run_draws():
    for args in (["-m", "experiment=default,china-140t"], ["--multirun"], ["sweep=risk"], ["output.plots=false"],
                 ["--cfg", "job"], ["hydra.mode=MULTIRUN"]):
        figures.start_early(args)
        assert figures._EARLY == [], args
    figures.start_early(["sweep=none", "demand.segments.consumer_chat.elasticity=1.2"])
    (early,) = figures._EARLY
    assert figures.helper_for(True) is early and figures._EARLY == []
    early.close()
    figures.start_early([])
    (unused,) = figures._EARLY
    assert figures.helper_for(False) is None and unused.proc.poll() is not None  # closed, not left running
    fresh = figures.helper_for(True)  # none started early: a new one
    assert fresh.proc.poll() is None
    fresh.close()


def test_the_helper_is_ready_to_draw_before_its_first_figure_arrives():
    """The helper imports pandas (the figures' data holds frames) and renders a throwaway figure
    while it waits, so that neither happens after the first figure arrives; nothing is left open."""
    code = ("import sys; from optimizer import figures; plt = figures.pyplot(); assert 'pandas' not in sys.modules; "
            "figures.warm_up(plt); assert 'pandas' in sys.modules and plt.get_fignums() == []; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
