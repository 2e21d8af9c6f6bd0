"""Vectorised sweeps: rows equal single solves, sharded equals unsharded, resume equals a full run."""

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from optimizer.engine import optimize
from optimizer.errors import ConfigError
from optimizer.schema import AxisConfig, SolverConfig, SweepConfig
from optimizer.sweep import design, resolve_path, run_sweep
from optimizer.problem import NO_CAP, scenario_inputs
from tests.scenarios import run_config, segment

ROOT = Path(__file__).resolve().parent.parent


def sweep_cfg(chunk_size=4, mode="grid", method="auto"):
    cfg = run_config({"chat": segment(demand="logit", elasticity=1.5),
                      "batch": segment(tier="batch", elasticity=2.0, volume=5e9)},
                     gpus=("h100-sxm", "h200-sxm"), precisions=("fp8",))
    axes = {"rent": AxisConfig(path="fleet.price_usd_per_gpu_hour.h200-sxm", values=[2.5, 3.59, 5.0]),
            "eps": AxisConfig(path="demand.segments.chat.elasticity", values=[1.2, 1.8]),
            "vol": AxisConfig(path="demand.segments.chat.input_tokens_per_day", values=[0.5, 2.0], relative=True)}
    return replace(cfg, sweep=SweepConfig(name="t", axes=axes, chunk_size=chunk_size, mode=mode),
                   solver=SolverConfig(integer_fleet=False, method=method))


def auglag(cfg):
    """``cfg`` solved by the augmented Lagrangian (8 starts): an independent check of dual rows."""
    return replace(cfg, solver=replace(cfg.solver, method="auglag"))


def test_design_grid_and_latin_hypercube():
    g = design(sweep_cfg().sweep)
    assert len(g) == 12 and sorted(g["rent"].unique()) == [2.5, 3.59, 5.0]
    sw = SweepConfig(name="s", mode="sample", samples=50, seed=3,
                     axes={"a": AxisConfig(path="x", uniform=[0.0, 1.0]), "b": AxisConfig(path="y", loguniform=[1, 100])})
    d = design(sw)
    assert len(d) == 50 and d["a"].between(0, 1).all() and d["b"].between(1, 100).all()
    # Latin hypercube: exactly one sample per tenth of each axis' range
    assert sorted(np.floor(d["a"] * 50).astype(int)) == list(range(50))
    assert design(sw).equals(d)  # seeded
    with pytest.raises(ConfigError, match="sweep.mode=sample"):
        design(SweepConfig(axes={"a": AxisConfig(path="x", uniform=[0, 1])}))
    with pytest.raises(ConfigError, match="exactly one of"):
        design(SweepConfig(axes={"a": AxisConfig(path="x")}))


def test_bad_axis_paths_name_the_path():
    _, _, labels = scenario_inputs(sweep_cfg())
    assert resolve_path("demand.segments.chat.elasticity", labels).field == "elasticity"
    assert resolve_path("quality.llama-3p1-8b.fp8", labels).index == (0, 0)
    for bad, why in [("demand.segments.chatt.elasticity", "unknown segment 'chatt'"),
                     ("demand.segments.chat.tier", "not a numeric segment field"),
                     ("fleet.price_usd_per_gpu_hour.b200", "unknown GPU 'b200'"),
                     ("solver.learning_rate", "does not exist or is not numeric")]:
        with pytest.raises(ConfigError, match="sweep axis path") as e:
            resolve_path(bad, labels)
        assert why in str(e.value) and bad in str(e.value)


def test_rent_axes_keep_on_demand_above_reserved_and_idle_below():
    """Axes on the reserved rent, the on-demand rent and the idle value: a scenario that breaks their
    order is refused before solving, naming the axes, the GPU and the values (as a single run's config)."""
    from optimizer.sweep.axes import check_rents

    numbers, _, labels = scenario_inputs(sweep_cfg())  # H100 2.69 / 4.76, H200 3.59 / 6.35 USD per GPU-hour
    names = ["od", "rent", "idle"]
    targets = [resolve_path("fleet.on_demand_usd_per_gpu_hour.h200-sxm", labels),
               resolve_path("fleet.price_usd_per_gpu_hour.h200-sxm", labels),
               resolve_path("fleet.idle_value_usd_per_gpu_hour", labels)]
    assert targets[0].field == "on_demand_usd_per_gpu_hour" and targets[2].index == ()
    ok = pd.DataFrame({"od": [1.0, 2.0], "rent": [3.0, 5.0], "idle": [0.0, 2.0]})
    check_rents(numbers, targets, [True, False, False], ok, names, list(labels.gpus))
    bad = pd.DataFrame({"od": [1.0, 0.7], "rent": [3.0, 5.0], "idle": [0.0, 1.0]})  # 0.7 x 6.35 < 5.0
    with pytest.raises(ConfigError, match=r"sweep.axes.od, sweep.axes.rent, sweep.axes.idle: 1 scenario\(s\) put "
                                          r"the on-demand rent of h200-sxm below its reserved rent \(scenario 1: 4.445 < 5"):
        check_rents(numbers, targets, [True, False, False], bad, names, list(labels.gpus))
    idle = pd.DataFrame({"od": [1.0, 1.0], "rent": [3.0, 3.0], "idle": [0.0, 2.8]})  # 2.8 >= the H100's 2.69
    with pytest.raises(ConfigError, match="idle value of h100-sxm at or above its reserved rent"):
        check_rents(numbers, targets, [True, False, False], idle, names, list(labels.gpus))
    # a reserved-rent axis alone keeps the documented clipping (sweep=what-if takes B200 to 13 > 10.57)
    check_rents(numbers, targets[1:2], [False], pd.DataFrame({"rent": [3.0, 9.0]}), ["rent"], list(labels.gpus))
    # a GPU the base offers no on-demand rent (MI325X has none in the catalog): an axis of rents offers
    # it, checked like any other (a rent below reserved was clipped to it: every row the same plan)
    od = np.asarray(numbers.on_demand_usd_per_gpu_hour, float).copy()
    od[1] = NO_CAP
    no_od = numbers._replace(on_demand_usd_per_gpu_hour=od)
    check_rents(no_od, targets[:1], [False], pd.DataFrame({"od": [3.59, 5.0]}), ["od"], list(labels.gpus))
    with pytest.raises(ConfigError, match=r"on-demand rent of h200-sxm below its reserved rent \(scenario 0: 1 < 3.59"):
        check_rents(no_od, targets[:1], [False], pd.DataFrame({"od": [1.0, 1.5]}), ["od"], list(labels.gpus))
    with pytest.raises(ConfigError, match=r"sweep.axes.od scales the on-demand rent of h200-sxm, which has none in "
                                          r"the base scenario .* \(relative: false\)"):
        check_rents(no_od, targets[:1], [True], pd.DataFrame({"od": [1.2, 1.5]}), ["od"], list(labels.gpus))


# the augmented-Lagrangian variant in the nightly command (README); the dual is the sweep's default
@pytest.mark.parametrize("method", [pytest.param("dual", marks=pytest.mark.slow),  # CI time; nightly
                                    pytest.param("auglag", marks=pytest.mark.slow)])
def test_sweep_rows_equal_single_solves_and_resume_equals_full(tmp_path, method):
    """Both sweep solvers against single runs of the augmented Lagrangian (8 starts): its own sweep
    to 2e-4, within the checking dual's bound; the dual sweep to 0.1 %, never above its own certified bound, and the bound never
    below the single run's margin (weak duality)."""
    cfg = sweep_cfg(method=method)
    msgs = []
    full = run_sweep(cfg, tmp_path / "a", tmp_path / "store_a", log=msgs.append)
    assert f"solver {method}" in msgs[0]
    assert len(full) == 12 and full["converged"].all()
    # single solves of three of the scenarios
    for i in (0, 5, 11):
        row = full.iloc[i]
        seg = cfg.demand.segments["chat"]
        seg1 = replace(seg, elasticity=float(row["eps"]), input_tokens_per_day=seg.input_tokens_per_day * row["vol"])
        one = replace(cfg, demand=replace(cfg.demand, segments={**cfg.demand.segments, "chat": seg1}),
                      fleet=replace(cfg.fleet, price_usd_per_gpu_hour={"h200-sxm": float(row["rent"])}))
        single = float(optimize(auglag(one)).relaxed_breakdown.margin)
        if method == "auglag":
            assert single == pytest.approx(row["margin_usd_per_day"], rel=2e-4)
            # checked against the dual (optimizer.solve.check): its plan stands, with the dual's bound
            assert row["solver"] == "auglag"
            assert single <= row["margin_upper_bound_usd_per_day"] * (1 + 1e-9) + 0.01
            assert 0 <= row["optimality_gap_bound"] <= cfg.solver.dual_tol_gap
        else:
            assert row["margin_usd_per_day"] == pytest.approx(single, rel=1e-3)
            bound = row["margin_upper_bound_usd_per_day"]
            assert row["margin_usd_per_day"] <= bound + 0.01 and single <= bound * (1 + 1e-9) + 0.01
            assert 0 <= row["optimality_gap_bound"] <= cfg.solver.dual_tol_gap
    if method == "auglag":
        return
    # an interrupted sweep (one chunk of three done) resumes to the same table
    part = run_sweep(cfg, tmp_path / "b", tmp_path / "store_b", stop_after_chunks=1, log=lambda m: None)
    assert part.empty and len(list((tmp_path / "store_b").glob("*-c4/chunk_*.parquet"))) == 1
    resumed = run_sweep(cfg, tmp_path / "b", tmp_path / "store_b", log=lambda m: None)
    pd.testing.assert_frame_equal(resumed, full)
    assert (tmp_path / "b" / "sweep.parquet").exists()


def test_a_repair_round_keeps_the_better_plan_and_continues_the_solve():
    """Two step-limited rows re-solved twice: each round finds a worse plan than the first pass for
    row 0 and a better one for row 1. Each row keeps its best plan (a round's plan may be worse: its
    solve continues from the last iterate's charges, not the best plan's), every row's next round
    continues from the state the last round left, and its bound is the lowest found."""
    from collections import namedtuple

    from optimizer.solve import RESULTS
    from optimizer.sweep.repair import repair

    Rows = namedtuple("Rows", "status whole_ok margin bound start broken over overshoot step limit checked")

    def rows(margin, bound, state, checked=(-1, -1)):
        none = np.zeros((2, 3))
        return Rows(np.full(2, int(RESULTS.step_limit)), np.ones(2, bool), np.asarray(margin, float),
                    np.asarray(bound, float), np.asarray(state, float), none.astype(bool), none, none, none,
                    np.full((2, 3), 1e9), np.asarray(checked))

    starts = []

    def solve(values, start, cut, bound):
        starts.append(np.asarray(start).copy())
        k = len(starts)
        return rows([90.0 + k, 55.0 + k], np.minimum(bound, [105.0 - k, 61.0]), [k, k])  # as repair_scenario

    out = repair(rows([100.0, 50.0], [110.0, 60.0], [0.0, 0.0], (0, 2)), np.zeros((2, 1)), solve, batch=2, rounds=2)
    np.testing.assert_array_equal(out.result.checked, [0, 2])  # whose plan a row holds never changes
    np.testing.assert_allclose(out.result.margin, [100.0, 57.0])  # row 0: the first pass's; row 1: round 2's
    np.testing.assert_allclose(out.result.bound, [103.0, 60.0])  # the lowest bound of any round
    np.testing.assert_allclose(starts[1], [1.0, 1.0])  # round 2 continued from round 1's states
    np.testing.assert_allclose(out.result.start, [2.0, 2.0])
    assert list(out.rounds) == [2, 2]


def test_a_row_over_its_cap_is_solved_again_within_the_cap_as_set():
    """A first pass can end far over a GPU cap (infeasible: 1,155 B200s against 197 on a `wide` row).
    Its excess is not what rounding adds, so the cap is not lowered by it (which left no cap at all,
    and the row unrepaired): the row is solved again within the cap as set."""
    from collections import namedtuple

    from optimizer.solve import RESULTS
    from optimizer.sweep.repair import repair

    Rows = namedtuple("Rows", "status whole_ok margin bound start broken over overshoot step limit checked")
    limit = np.array([[197.0, 1e9, 1e9]])

    def row(status, whole):
        return Rows(np.array([int(status)]), np.array([True]), np.array([1.0]), np.array([9.0]), np.zeros(1),
                    whole > limit, whole - limit, np.array([[0.4, 0.0, 0.0]]), np.array([[8.0, 1.0, 1.0]]), limit,
                    np.array([-1]))

    cuts = []

    def solve(values, start, cut, bound):
        cuts.append(np.asarray(cut).copy())
        return row(RESULTS.converged, np.array([[196.9, 0.0, 0.0]]))

    out = repair(row(RESULTS.infeasible, np.array([[1155.7, 0.0, 0.0]])), np.zeros((1, 1)), solve, batch=1, rounds=3)
    assert len(cuts) == 1 and not cuts[0].any()  # solved once, within the cap as set
    assert out.result.status[0] == RESULTS.converged and not out.lowered[0]


def test_each_round_lowers_the_limits_its_last_solve_broke():
    """`wide` row 218 at 24 periods: its first pass rounds up over the daily budget; solved within
    the budget lowered, it rounds up over the B200 cap instead, at a lower relaxed margin, so that
    plan is not kept. The next round must lower the cap that solve broke (keeping the budget's cut):
    lowering only what the kept plan broke cut the budget round after round, the cap stayed broken and
    the row ended without a whole fleet. A limit the last solve broke by a hair comes down by at least
    a share of what rounding adds (``CUT_SHARE``), not by one replica-period only."""
    from collections import namedtuple

    from optimizer.solve import RESULTS
    from optimizer.solve.integer import CUT_SHARE
    from optimizer.sweep.repair import repair

    Rows = namedtuple("Rows", "status whole_ok margin bound start broken over overshoot step limit checked")
    limit = np.array([[336.1, 45663.7, 1e30]])
    step = np.array([[8.0, 2.6, 1.0]])

    def row(margin, whole, fractional):
        whole, fractional = np.array([whole]), np.array([fractional])
        broken = whole > limit
        return Rows(np.array([int(RESULTS.converged)]), ~broken.any(-1), np.array([margin]), np.array([1.5e5]),
                    np.zeros(1), broken, whole - limit, whole - fractional, step, limit, np.array([-1]))

    first = row(147923.0, [336.0, 45817.1, 0.0], [335.8, 45598.7, 0.0])  # budget broken by rounding
    answers = [row(147878.0, [337.0, 45650.0, 0.0], [336.1, 45440.0, 0.0]),  # within the budget: the cap breaks
               row(147860.0, [337.0, 45663.0, 0.0], [336.1, 45445.0, 0.0]),  # cap still broken by a hair
               row(147625.0, [329.0, 45600.0, 0.0], [328.1, 45380.0, 0.0])]  # both kept: a whole fleet
    cuts = []

    def solve(values, start, cut, bound):
        cuts.append(np.asarray(cut).copy())
        return answers[len(cuts) - 1]

    out = repair(first, np.zeros((1, 1)), solve, batch=1, rounds=4)
    assert len(cuts) == 3
    np.testing.assert_allclose(cuts[0][0], [0.0, 218.4, 0.0], atol=0.05)  # the budget, by what rounding adds
    assert cuts[1][0, 0] >= 0.9 and cuts[1][0, 1] == cuts[0][0, 1]  # then the cap the last solve broke
    assert cuts[2][0, 0] - cuts[1][0, 0] >= max(0.9, 2.0 * CUT_SHARE * 0.9)
    assert cuts[2][0, 1] == cuts[0][0, 1]
    assert out.result.whole_ok[0] and out.result.margin[0] == 147625.0 and out.lowered[0]


def test_a_row_without_a_whole_fleet_is_solved_again_within_a_lowered_budget(tmp_path):
    """A binding daily budget where rounding every pool up to whole replicas breaks it: without the
    repair pass the row is flagged ``no_whole_fleet``; with it the row is solved again within the
    budget lowered by what rounding adds, and becomes a converged plan whose whole fleet keeps the
    budget, at a margin below the first pass's relaxed one and within 1 % of the scenario's own bound."""
    base = sweep_cfg()
    cost = 6732.80  # USD/day: GPU cost of the base scenario's relaxed optimum (unconstrained)
    axes = {"budget": AxisConfig(path="fleet.budget_usd_per_day", values=[0.1 * cost, 0.6 * cost, 0.9 * cost])}
    cfg = replace(base, sweep=SweepConfig(name="budget", axes=axes, chunk_size=4, repair_rounds=0))
    first = run_sweep(cfg, tmp_path / "a", tmp_path / "store", log=lambda m: None)
    assert list(first["status"]) == ["converged", "no_whole_fleet", "no_whole_fleet"]
    assert (first["repair_rounds"] == 0).all() and not first["limits_lowered"].any()
    fixed = run_sweep(replace(cfg, sweep=replace(cfg.sweep, repair_rounds=3)), tmp_path / "b", tmp_path / "store",
                      log=lambda m: None)
    assert fixed["converged"].all() and fixed["whole_fleet_feasible"].all()
    assert list(fixed["limits_lowered"]) == [False, True, True] and list(fixed["repair_rounds"] > 0) == [False, True, True]
    pd.testing.assert_series_equal(fixed["margin_usd_per_day"][:1], first["margin_usd_per_day"][:1])
    for i in (1, 2):
        assert fixed["gpu_cost_usd_per_day"][i] < fixed["budget"][i] - 1.0  # room for the whole replicas
        assert fixed["margin_usd_per_day"][i] < first["margin_usd_per_day"][i]
        # the bound of the scenario as set (not of the lowered budget) certifies the row
        assert fixed["margin_upper_bound_usd_per_day"][i] == pytest.approx(first["margin_upper_bound_usd_per_day"][i],
                                                                           rel=1e-3)
        assert 0 < fixed["optimality_gap_bound"][i] < 0.01


@pytest.mark.slow  # CI time (hours added to the model); in the nightly command (README)
def test_capped_sweep_uses_the_dual_and_matches_single_solves(tmp_path):
    """A GPU cap as an axis: the dual solver prices it (auto picks dual), rows stay within the cap
    and equal single augmented-Lagrangian runs to 0.1 %; a quality floor goes to the augmented
    Lagrangian, and solver.method=dual refuses it."""
    base = sweep_cfg()
    free = optimize(replace(base, sweep=SweepConfig()))
    need = float(np.asarray(free.relaxed_breakdown.gpus)[0].sum())  # H100s the free optimum uses
    axes = {"cap": AxisConfig(path="fleet.gpu_caps.h100-sxm", values=[0.3 * need, 0.7 * need, 2.0 * need])}
    cfg = replace(base, sweep=SweepConfig(name="cap", axes=axes, chunk_size=4))
    msgs = []
    rows = run_sweep(cfg, tmp_path / "a", tmp_path / "store_a", log=msgs.append)
    assert "solver dual" in msgs[0] and rows["converged"].all()
    assert (rows["gpus[h100-sxm]"] <= rows["cap"] * (1 + 1e-4) + 1e-3).all()
    for i in range(3):
        one = replace(cfg, fleet=replace(cfg.fleet, gpu_caps={"h100-sxm": float(rows["cap"][i])}))
        single = float(optimize(auglag(one)).relaxed_breakdown.margin)
        assert rows["margin_usd_per_day"][i] == pytest.approx(single, rel=1e-3)
        assert single <= rows["margin_upper_bound_usd_per_day"][i] * (1 + 1e-4)
    assert rows["margin_usd_per_day"][0] < rows["margin_usd_per_day"][1] < rows["margin_usd_per_day"][2]
    chat = replace(cfg.demand.segments["chat"], min_quality=0.99)
    floor = replace(cfg, demand=replace(cfg.demand, segments={**cfg.demand.segments, "chat": chat}))
    with pytest.raises(ConfigError, match="quality floors"):
        run_sweep(replace(floor, solver=replace(floor.solver, method="dual")), tmp_path / "b", tmp_path / "store_b",
                  log=lambda m: None)
    msgs = []
    run_sweep(floor, tmp_path / "c", tmp_path / "store_c", log=msgs.append)
    assert "solver auglag" in msgs[0]


def test_an_augmented_lagrangian_row_below_the_duals_plan_takes_the_duals_plan(tmp_path):
    """Every row of an augmented-Lagrangian sweep is checked against the dual (optimizer.solve.check),
    the same solve a dual sweep's row makes (on the task with floors relaxed; there are none here),
    whose plan is also one of the row's starts. With one outer step of three inner ones the
    augmented Lagrangian stalls: no row ends below the dual's plan by more than the tolerance, a
    row that would takes the dual's plan, status and bound (after the same repair pass a dual
    sweep's row goes through: six dual steps leave a row to repair), and every row carries the
    dual's bound.
    (With the solver's own steps each row keeps its own plan: the slow test above.)"""
    base = sweep_cfg(chunk_size=3)
    # few dual steps per row: the rows need the repair pass (which re-solves a row holding the dual's plan)
    base = replace(base, sweep=replace(base.sweep, axes={"rent": base.sweep.axes["rent"]}, dual_steps=6,
                                       dual_steps_periods=6))
    stalled = replace(base, solver=replace(base.solver, method="auglag", outer_steps=1, inner_steps=3, starts=1))
    msgs = []
    checked = run_sweep(stalled, tmp_path / "a", tmp_path / "store_a", log=msgs.append)
    dual = run_sweep(replace(base, solver=replace(base.solver, method="dual")), tmp_path / "b", tmp_path / "store_b",
                     log=lambda m: None)
    assert dual["converged"].all() and (dual["solver"] == "dual").all()
    replaced = checked["solver"] == "dual"
    assert "solver auglag" in msgs[0] and f"replaced the augmented Lagrangian's in {replaced.sum()} scenario(s)" in msgs[-1]
    assert replaced.sum() >= 1
    tol = stalled.solver.dual_tol_gap * dual["margin_upper_bound_usd_per_day"]
    assert (checked["margin_usd_per_day"] >= dual["margin_usd_per_day"] - tol).all()
    assert (checked.loc[replaced, "repair_rounds"] > 0).any()
    for col in ("margin_usd_per_day", "status", "gpus[h200-sxm]", "repair_rounds"):
        pd.testing.assert_series_equal(checked.loc[replaced, col], dual.loc[replaced, col], rtol=1e-9)
    pd.testing.assert_series_equal(checked["margin_upper_bound_usd_per_day"], dual["margin_upper_bound_usd_per_day"],
                                   rtol=1e-9)


def test_a_repair_never_takes_a_dual_plan_that_breaks_a_quality_floor():
    """The repair pass of an augmented-Lagrangian sweep re-solves a row holding the dual's plan on
    its task without floors; a plan that breaks a floor counts as infeasible, so it is never taken."""
    import functools

    import jax

    from optimizer.constraints import active_mask
    from optimizer.problem import assemble
    from optimizer.solve import relaxed_task
    from optimizer.solve.check import floors_relaxed
    from optimizer.solve.choose import dual_of, has_quality_floors
    from optimizer.sweep.batch import repair_scenario

    base = sweep_cfg()
    dual = dual_of(base.solver, steps=50)
    solve = jax.jit(functools.partial(repair_scenario, solver=dual, serving=None, floors=True))  # one compile
    statuses = {}
    for floor in (0.5, 0.9999):  # fp8 serves below 0.9999 of BF16's quality, far above 0.5
        chat = replace(base.demand.segments["chat"], min_quality=floor)
        cfg = replace(base, demand=replace(base.demand, segments={**base.demand.segments, "chat": chat}))
        numbers, pools, labels = scenario_inputs(cfg)
        prob = assemble(numbers, pools)
        active = np.asarray(active_mask(labels, prob, fixed_fleet=False))
        G = len(labels.gpus)
        assert has_quality_floors(active, G)
        start = dual.init(relaxed_task(prob, floors_relaxed(active, G)))
        row = solve(numbers, pools, active=active, start=start, cut=np.zeros(G + 2), bound=np.asarray(np.inf))
        statuses[floor] = (int(row.status), float(np.asarray(row.quality)[labels.segments.index("chat")].max()))
    from optimizer.solve import RESULTS

    assert statuses[0.9999][0] == RESULTS.infeasible and statuses[0.9999][1] < 0.9999
    assert statuses[0.5][0] != RESULTS.infeasible and statuses[0.5][1] > 0.5


@pytest.mark.slow  # 40 s on 2 cores; in the nightly command (README)
def test_sharded_sweep_equals_unsharded(tmp_path):
    cfg = sweep_cfg(chunk_size=6)
    local = run_sweep(cfg, tmp_path / "one", tmp_path / "s1", log=lambda m: None)
    script = f"""
import os, sys
sys.path.insert(0, {str(ROOT)!r})
import jax
jax.config.update("jax_enable_x64", True)
assert len(jax.devices()) == 2, jax.devices()
from pathlib import Path
from tests.test_sweep import sweep_cfg
from optimizer.sweep import run_sweep
run_sweep(sweep_cfg(chunk_size=6), Path({str(tmp_path / 'two')!r}), Path({str(tmp_path / 's2')!r}), log=print)
"""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 device(s)" in r.stdout
    sharded = pd.read_parquet(tmp_path / "two" / "sweep.parquet")
    num = local.select_dtypes("number").columns
    np.testing.assert_allclose(sharded[num].to_numpy(float), local[num].to_numpy(float), rtol=1e-8, atol=1e-9)


@pytest.mark.slow  # CI time (hours added to the model); in the nightly command (README)
def test_cli_sweep_writes_table_plots_and_summary(tmp_path, cli_jax_cache):
    """`tokenmargin sweep=what-if` with smaller axes, end to end: the Parquet table, both plots and
    a summary with the certified optimality gap, and the sweep's exported programs in the cache."""
    import json

    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TOKENMARGIN_JAX_CACHE": cli_jax_cache}
    # the what-if axes moved onto the single-segment DeepSeek preset (contracts: the certificate is
    # exact, and the programs compile in half the time of the default's shared sheets)
    args = [sys.executable, "-c", "from optimizer.cli import main; main()", "sweep=what-if", "experiment=deepseek-h800",
            "sweep.axes.rent_b200.path=fleet.price_usd_per_gpu_hour.h800", "sweep.axes.rent_b200.linspace=[1.5,3.0,3]",
            "sweep.axes.chat_volume.path=demand.segments.deepseek_service.input_tokens_per_day",
            "sweep.axes.chat_volume.logspace=[0.5,5.0,2]",
            "sweep.axes.chat_elasticity.path=demand.segments.deepseek_service.elasticity",
            "sweep.axes.chat_elasticity.linspace=[1.2,1.8,2]", f"sweep.directory={tmp_path / 'store'}",
            f"hydra.run.dir={tmp_path / 'run'}"]
    r = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "run"
    table = pd.read_parquet(run / "sweep.parquet")
    assert len(table) == 12 and table["converged"].all()
    assert (table["margin_usd_per_day"] <= table["margin_upper_bound_usd_per_day"] + 0.01).all()
    assert (run / "tornado.png").stat().st_size > 0 and (run / "heatmap.png").stat().st_size > 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["scenarios"] == 12 and summary["converged"] == 12
    assert 0 <= summary["optimality_gap_bound"]["p50"] <= summary["optimality_gap_bound"]["max"] <= 5e-3
    assert "certified optimality gap" in r.stdout
    # the exported traced programs sit beside the compilation cache for the next run
    assert list((Path(cli_jax_cache) / "tokenmargin-export").glob("sweep_chunk-*.xla"))


def serving_sweep(mode="sample", **axis):
    """DeepSeek-V3 on Hopper with Hopper's bandwidth efficiency as an axis: a serving input that
    moves which deployment layout (TP / EP / nodes) serves a pool best."""
    cfg = run_config({"chat": segment(demand="logit", elasticity=1.5, models=("deepseek-v3",), price=(0.6, 1.8))},
                     gpus=("h100-sxm", "h200-sxm"), precisions=("fp8",))
    rent = {"values": [2.5, 5.0]} if mode == "grid" else {"uniform": [2.5, 5.0]}
    axes = {"bw": AxisConfig(path="efficiency.bw_eff.hopper", **axis),
            "rent": AxisConfig(path="fleet.price_usd_per_gpu_hour.h200-sxm", **rent)}
    return replace(cfg, sweep=SweepConfig(name="s", axes=axes, mode=mode, samples=200, seed=1))


def cheapest(scores, index=None, valid=None):
    """(M, S, P) fewest GPU-s per request over every candidate, or over those of ``index`` (S, P, W)."""
    gpu_s, ok = (np.asarray(x) for x in scores)
    score = np.where(ok, gpu_s, np.inf)
    if index is not None:
        score = np.where(valid, np.take_along_axis(score, np.broadcast_to(index, score.shape[:1] + index.shape), -1),
                         np.inf)
    return score.min(-1)


# the grid variant (20 s) is in the nightly command (README): CI time, which this session's
# tests/test_hourly.py::test_a_day_at_three_rents_under_a_budget_is_certified (18 s) would otherwise add to
@pytest.mark.parametrize("mode", [pytest.param("grid", marks=pytest.mark.slow), "sample"])
def test_sweep_keeps_each_scenarios_best_deployment(mode):
    """With a serving input as an axis, the deployments a sweep keeps (the base's and the probes'
    best, :func:`prune_candidates`) serve every scenario of the design as cheaply as every candidate
    does: exactly on a grid (every distinct value is probed), within 1e-3 on a 200-row Latin
    hypercube (32 probes), where keeping the base's deployment alone is measurably worse."""
    from optimizer.problem import candidate_scores, kept_candidates
    from optimizer.sweep.axes import MAX_PROBES, probe_rows
    from optimizer.sweep.batch import probe_program
    from optimizer.sweep.run import _candidate_scores

    cfg = serving_sweep(mode, **({"values": [0.45, 0.55, 0.65, 0.75, 0.85]} if mode == "grid" else {"uniform": [0.45, 0.85]}))
    numbers, pools, labels = scenario_inputs(cfg)
    plan = design(cfg.sweep)
    targets = [resolve_path(a.path, labels) for a in cfg.sweep.axes.values()]
    rel = [False, False]
    assert len(probe_rows(plan, [True, False])) == (5 if mode == "grid" else MAX_PROBES)
    index, valid = kept_candidates(*_candidate_scores(numbers, pools, plan, targets, rel))
    base_index, base_valid = kept_candidates(*candidate_scores(numbers, pools))
    scores = probe_program(targets, rel)(numbers, plan.to_numpy(float), pools)  # every row, every candidate
    every = cheapest(scores)
    ours, theirs = cheapest(scores, index, valid), cheapest(scores, base_index, base_valid)
    finite = np.isfinite(every)
    assert np.array_equal(finite, np.isfinite(ours))
    loss = ours[finite] / every[finite] - 1
    assert index.shape[-1] >= 2  # the winners change along the axis
    assert np.max(theirs[finite] / every[finite] - 1) > 1e-2  # ... so the base's layout alone loses
    if mode == "grid":
        assert np.max(np.abs(loss)) <= 1e-12
    else:
        assert np.max(loss) <= 1e-3 and np.mean(loss <= 1e-12) >= 0.99


def test_probe_rows_cover_the_serving_axes():
    from optimizer.sweep.axes import probe_rows

    plan = pd.DataFrame({"bw": np.linspace(0.5, 0.8, 100), "rent": np.arange(100.0)})
    assert len(probe_rows(plan, [False, False])) == 0  # no serving axis: the base's deployments suffice
    rows = probe_rows(plan, [True, False], max_probes=8)
    assert len(rows) == 8 and {0, 99} <= set(rows)  # both ends, then the widest gaps
    # farthest-point sampling: no gap wider than twice an even spacing's
    assert np.max(np.diff(np.sort(plan["bw"].to_numpy()[rows]))) <= 2 * 0.3 / 7 + 1e-12
    repeated = pd.DataFrame({"bw": [0.5, 0.6, 0.5, 0.6], "rent": [1.0, 2.0, 3.0, 4.0]})
    assert list(probe_rows(repeated, [True, False])) == [0, 1]  # each distinct value once
