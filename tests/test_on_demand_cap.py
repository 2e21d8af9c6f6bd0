"""Per-period caps on the on-demand GPUs a cloud lends (issue 13): the reserves they force and the
plans that follow.

Oracles: brute-force reserves at per-period rents, the LP of the capped reserves (SciPy HiGHS), the
one-pool closed form ``R = max(R_free, max_t (n_t − A_t))``, finite differences of the LP's optimum,
and a one-price brute-force search of a whole plan.
"""

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linprog

from kernels.capacity import (capped_reserve, cycle_cost, on_demand_gpus, reserve_level, reserve_level_periods)
from optimizer import economics as econ
from optimizer.decision import raw_price, reference_decision
from optimizer.engine import optimize
from optimizer.errors import ConfigError
from optimizer.objective import evaluate
from optimizer.problem import build_problem
from tests.scenarios import run_config, segment


def lp_reserve(need, kappa, nu, cap):
    """The capped reserve problem of one GPU type as an LP: variables R (P), on-demand o (P, T) and
    idle reserved i (P, T) GPUs, ``o − i = n − R``; cost ``Σ R + (1/T) Σ (κ o − ν i)``; ``Σ_p o_pt ≤ A_t``."""
    P, T = need.shape
    nv = P + 2 * P * T
    c = np.concatenate([np.ones(P), np.full(P * T, kappa / T), np.full(P * T, -nu / T)])
    a_eq = np.zeros((P * T, nv))
    for p in range(P):
        for t in range(T):
            r = p * T + t
            a_eq[r, p], a_eq[r, P + r], a_eq[r, P + P * T + r] = 1.0, 1.0, -1.0
    a_ub = np.zeros((T, nv))
    for t in range(T):
        a_ub[t, P + np.arange(P) * T + t] = 1.0
    res = linprog(c, A_ub=a_ub, b_ub=cap, A_eq=a_eq, b_eq=need.ravel(), bounds=[(0, None)] * nv, method="highs")
    assert res.status == 0
    return res.fun, res.x[:P]


capped_reserve_jit = jax.jit(capped_reserve)


def random_type(rng, P=5, T=24, tight=(0.1, 0.9)):
    """Needs of P pools with shifted daily cycles, rents and a per-period cap below the free on-demand peak."""
    base = rng.uniform(5, 50, (P, 1))
    phase = rng.uniform(0, 2 * np.pi, (P, 1))
    need = base * (1 + 0.8 * np.sin(np.linspace(0, 2 * np.pi, T, endpoint=False)[None] + phase)) * rng.uniform(0.9, 1.1, (P, T))
    kappa, nu = rng.uniform(1.2, 3.0), rng.uniform(0.0, 0.3)
    free = np.asarray(reserve_level(jnp.asarray(need), kappa, nu))
    peak = np.maximum(need - free[:, None], 0).sum(0).max()
    cap = peak * rng.uniform(*tight) * rng.uniform(0.7, 1.0, T)  # less on offer in some hours
    return need, kappa, nu, cap


def test_reserve_at_per_period_rents_is_the_brute_force_optimum():
    rng = np.random.default_rng(0)
    need = rng.uniform(0, 10, (40, 24))
    kappa = rng.uniform(1.0, 4.0, (40, 24))
    nu = rng.uniform(0.0, 0.5, 40)
    got = np.asarray(reserve_level_periods(jnp.asarray(need), jnp.asarray(kappa), jnp.asarray(nu)))

    def cost(i, r):
        d = need[i] - r
        return r + np.mean(np.maximum(kappa[i] * d, nu[i] * d))

    for i in range(40):  # the cost is piecewise linear with kinks at the needs: its minimum is at one (or 0)
        best = min(cost(i, r) for r in np.concatenate([[0.0], need[i]]))
        assert cost(i, got[i]) == pytest.approx(best, rel=1e-12, abs=1e-12)
    # a constant κ gives the k-th largest need of the load-duration rule
    flat = np.asarray(reserve_level_periods(jnp.asarray(need), jnp.full((40, 24), 1.7), jnp.full(40, 0.1)))
    np.testing.assert_array_equal(flat, np.asarray(reserve_level(jnp.asarray(need), 1.7, 0.1)))


def test_capped_reserves_keep_the_caps_at_the_lps_cost():
    rng = np.random.default_rng(1)
    excess = []
    for _ in range(25):
        need, kappa, nu, cap = random_type(rng)
        r, price = capped_reserve_jit(jnp.asarray(need[None]), kappa, nu, jnp.asarray(cap[None]))
        r = np.asarray(r[0])
        assert (np.asarray(on_demand_gpus(jnp.asarray(need[None]), jnp.asarray(r[None])))[0] <= cap * (1 + 1e-9) + 1e-6).all()
        assert (r >= -1e-12).all() and (r <= need.max(-1) + 1e-9).all()
        assert (np.asarray(price) >= 0).all()
        got = float(np.asarray(cycle_cost(jnp.asarray(need), jnp.asarray(r), kappa, nu)).sum())
        best, _ = lp_reserve(need, kappa, nu, cap)
        excess.append((got - best) / best)
    excess = np.asarray(excess)
    assert excess.min() > -1e-9  # feasible, so never below the LP's optimum
    assert excess.max() < 2e-3 and np.median(excess) < 1e-4, excess


def test_one_pool_reserves_to_its_peak_above_the_cap():
    rng = np.random.default_rng(2)
    for _ in range(10):
        need, kappa, nu, cap = random_type(rng, P=1)
        free = float(reserve_level(jnp.asarray(need[0]), kappa, nu))
        r, _ = capped_reserve_jit(jnp.asarray(need[None]), kappa, nu, jnp.asarray(cap[None]))
        assert float(r[0, 0]) == pytest.approx(max(free, float((need[0] - cap).max())), rel=1e-9)


def test_a_cap_that_does_not_bind_changes_nothing():
    rng = np.random.default_rng(3)
    need, kappa, nu, _ = random_type(rng)
    free = np.asarray(reserve_level(jnp.asarray(need), kappa, nu))
    cap = np.full(24, 1.01 * np.maximum(need - free[:, None], 0).sum(0).max())
    r, price = capped_reserve(jnp.asarray(need[None]), kappa, nu, jnp.asarray(cap[None]))
    np.testing.assert_allclose(np.asarray(r[0]), np.asarray(reserve_level(jnp.asarray(need), kappa, nu)), rtol=1e-12)
    assert float(jnp.max(price)) == 0.0


def test_capped_reserve_under_jit_and_vmap():
    rng = np.random.default_rng(4)
    rows = [random_type(rng) for _ in range(3)]
    need = jnp.asarray(np.stack([r[0] for r in rows]))[:, None]  # (3, 1, P, T): three scenarios of one type
    kappa = jnp.asarray([r[1] for r in rows])
    nu = jnp.asarray([r[2] for r in rows])
    cap = jnp.asarray(np.stack([r[3] for r in rows]))[:, None]
    batched = jax.jit(jax.vmap(capped_reserve))(need, kappa, nu, cap)
    for i in range(3):
        one = capped_reserve(need[i], kappa[i], nu[i], cap[i])
        np.testing.assert_allclose(np.asarray(batched[0][i]), np.asarray(one[0]), rtol=1e-12)


CHAT = {"chat": segment(elasticity=2.0, peak_to_mean=1.5, profile="burstgpt-1-azure-openai-gpt"),
        "code": segment(elasticity=1.6, peak_to_mean=2.5, volume=5e9, profile="servegen-reason-deepseek-r1")}


def _capped(cap, periods=24, **kw):
    return run_config(CHAT, periods=periods, precisions=("fp8", "bf16"), on_demand_cap={"h100-sxm": cap}, **kw)


def test_the_capped_fleet_cost_has_the_lps_gradient():
    """The fleet's cost is differentiated by its envelope (on-demand at κ + μ_t); against central
    differences of the LP's own optimum."""
    prob, _ = build_problem(_capped(30.0))
    rng = np.random.default_rng(5)
    G, J, K, T = econ.pool_ratios(prob)[0].shape[0], *np.shape(prob.tp)[1:], np.shape(prob.profile)[-1]
    prof = 1 + 0.8 * np.sin(np.linspace(0, 2 * np.pi, T, endpoint=False))
    need = rng.uniform(20, 60, (G, J, K, 1)) * np.roll(prof, 5)[None, None, None] * rng.uniform(0.95, 1.05, (G, J, K, T))
    kappa, nu = float(prob.on_demand_ratio[0]), float(prob.idle_ratio[0])
    rent_day = float(econ.usd_per_gpu_day(prob)[0])
    cap = np.asarray(prob.on_demand_cap)[0]

    def lp_cost(n):
        return lp_reserve(n[0].reshape(J * K, T), kappa, nu, cap)[0] * rent_day

    reserved, cost = econ.cycle_fleet(jnp.asarray(need), prob)
    assert float(cost) == pytest.approx(lp_cost(need), rel=2e-3)
    assert np.asarray(econ.on_demand_per_type(jnp.asarray(need), reserved)).max() <= cap.max() * (1 + 1e-9)
    grad = np.asarray(jax.grad(lambda n: econ.cycle_fleet(n, prob)[1])(jnp.asarray(need)))
    h = 1e-4
    for idx in [(0, 0, 0, t) for t in range(0, T, 3)] + [(0, 0, 1, t) for t in range(1, T, 4)]:
        up, down = need.copy(), need.copy()
        up[idx] += h
        down[idx] -= h
        fd = (lp_cost(up) - lp_cost(down)) / (2 * h)
        assert grad[idx] == pytest.approx(fd, rel=2e-2, abs=1e-3 * rent_day), idx


def test_a_capped_plan_keeps_the_cap_and_is_the_brute_force_optimum():
    """One product at one price on one pool: the dual's plan against a search over the price
    multiplier, each price's fleet cost from the capped reserve (exact for one pool)."""
    segs = {"chat": segment(elasticity=2.0, peak_to_mean=1.5, profile="burstgpt-1-azure-openai-gpt")}
    free = optimize(run_config(segs, periods=24, method="dual"))
    b0 = free.relaxed_breakdown
    peak_od = float(np.asarray(econ.on_demand_per_type(b0.period_gpus, b0.reserved)).max())
    assert peak_od > 1.0  # the free plan rents on-demand GPUs at the peak
    cap = 0.3 * peak_od
    res = optimize(run_config(segs, periods=24, method="dual", on_demand_cap={"h100-sxm": cap}))
    assert res.relaxed.result == 0
    b, prob = res.relaxed_breakdown, res.prob
    od = np.asarray(econ.on_demand_per_type(b.period_gpus, b.reserved))
    assert od.max() == pytest.approx(cap, rel=1e-6)  # the cap binds at the peak, and holds
    dec = reference_decision(prob)
    R = np.shape(prob.sheet_ref)[0]
    margin = jax.jit(jax.vmap(lambda m: evaluate(dec._replace(price_raw=raw_price(jnp.full((R, 3), m), prob)),
                                                 prob).margin))
    logs = np.linspace(float(prob.log_mu_lo[0]), float(prob.log_mu_hi[0]), 4001)  # the price box
    grid = np.asarray(margin(jnp.asarray(logs)))
    fine = np.linspace(logs[grid.argmax() - 2], logs[grid.argmax() + 2], 2001)
    best = float(np.asarray(margin(jnp.asarray(fine))).max())
    assert float(b.margin) == pytest.approx(best, rel=1e-4)
    assert float(res.relaxed.bound) >= best * (1 - 1e-9)
    assert float(b.margin) < float(b0.margin)  # the cap costs something


@pytest.fixture(scope="module")
def free_and_capped():
    """The dual's plans of :data:`CHAT` without a cap and with one at 40 % of the free plan's peak on-demand GPUs."""
    free = optimize(_capped(None, method="dual"))
    b0 = free.relaxed_breakdown
    cap = 0.4 * float(np.asarray(econ.on_demand_per_type(b0.period_gpus, b0.reserved)).max())
    return free, cap, optimize(_capped(cap, method="dual"))


@pytest.mark.parametrize("method", ["dual", "auglag"])
def test_each_solver_prices_an_on_demand_cap(method, free_and_capped):
    """Two segments with different daily cycles, two precisions: a binding cap (prices rise, so
    the fleet may shrink) lowers the margin; each solver's plan keeps the cap, and both reach the
    same margin."""
    free, cap, dual = free_and_capped
    res = dual if method == "dual" else optimize(_capped(cap, method=method))
    b = res.relaxed_breakdown
    od = np.asarray(econ.on_demand_per_type(b.period_gpus, b.reserved))
    assert od.max() == pytest.approx(cap, rel=1e-3) and od.max() <= cap * (1 + 1e-6)
    assert float(b.margin) < float(free.relaxed_breakdown.margin)
    if method == "dual":
        assert res.relaxed.result == 0
        assert float(res.relaxed.gap) <= 5e-3
    else:  # within the dual's certified bound of the same scenario
        assert float(b.margin) == pytest.approx(float(dual.relaxed_breakdown.margin), rel=3e-3)
        assert float(b.margin) <= float(dual.relaxed.bound) * (1 + 1e-9)


def test_on_demand_cap_config_errors():
    with pytest.raises(ConfigError, match=r"fleet.on_demand_cap_profile has 3 values; accepted: one share per period"):
        build_problem(replace(_capped(10.0), fleet=replace(_capped(10.0).fleet, on_demand_cap_profile=[1.0, 0.5, 1.0])))
    bad = replace(_capped(10.0).fleet, on_demand_cap_profile=[1.5] * 24)
    with pytest.raises(ConfigError, match=r"on_demand_cap_profile contains 1.5; accepted: shares in \[0, 1\]"):
        build_problem(replace(_capped(10.0), fleet=bad))
    with pytest.raises(ConfigError, match="fleet.on_demand is false"):
        build_problem(replace(_capped(10.0), fleet=replace(_capped(10.0).fleet, on_demand=False)))
    with pytest.raises(ConfigError, match=r"fleet.on_demand_cap.b200 = 5.0 names GPU 'b200', which is not in fleet.gpus"):
        build_problem(replace(_capped(10.0), fleet=replace(_capped(10.0).fleet, on_demand_cap={"b200": 5.0})))
    none = replace(_capped(None).fleet, on_demand_cap_profile=[1.0] * 24)
    with pytest.raises(ConfigError, match="no fleet.on_demand_cap.<gpu> is"):
        build_problem(replace(_capped(None), fleet=none))


def test_a_sweep_over_the_on_demand_cap(tmp_path, free_and_capped):
    """The cap as a sweep axis: every row converges, the margin never falls as the cap loosens, a
    cap above the free plan's peak on-demand GPUs gives the free plan, and the row at the fixture's
    cap is its single run."""
    from optimizer.schema import AxisConfig, SweepConfig
    from optimizer.sweep import run_sweep

    free, cap, dual = free_and_capped
    loose = 3.0 * cap
    base = _capped(cap, method="dual")
    axes = {"cap": AxisConfig(path="fleet.on_demand_cap.h100-sxm", values=[0.5 * cap, cap, loose])}
    cfg = replace(base, sweep=SweepConfig(name="od-cap", axes=axes, chunk_size=4))
    df = run_sweep(cfg, tmp_path / "out", tmp_path / "store", log=lambda m: None)
    assert list(df["status"]) == ["converged"] * 3
    m = df["margin_usd_per_day"].to_numpy()
    assert m[0] < m[1] < m[2]
    assert m[1] == pytest.approx(float(dual.relaxed_breakdown.margin), rel=3e-3)
    assert m[2] == pytest.approx(float(free.relaxed_breakdown.margin), rel=3e-3)
    bad = replace(_capped(None, method="dual"), sweep=SweepConfig(name="od-cap", axes=axes, chunk_size=4))
    with pytest.raises(ConfigError, match=r"sweep.axes.cap \(path fleet.on_demand_cap.h100-sxm\) sweeps the on-demand "
                                          r"cap of h100-sxm, which the base scenario does not set"):
        run_sweep(bad, tmp_path / "out2", tmp_path / "store", log=lambda m: None)


def test_a_warm_start_from_nearby_needs_prices_stays_feasible_and_close():
    """The dual solver re-solves the caps' LP at every step from the last step's prices, in a few
    steps: within the caps always, and near the LP's cost when the needs moved little."""
    from kernels.capacity import CAP_WARM_FEASIBLE_ITERS, CAP_WARM_ITERS

    warm = jax.jit(lambda n, k, v, c, s: capped_reserve(n, k, v, c, CAP_WARM_ITERS, s, CAP_WARM_FEASIBLE_ITERS))
    rng = np.random.default_rng(6)
    excess = []
    for _ in range(15):
        need, kappa, nu, cap = random_type(rng)
        _, price = capped_reserve_jit(jnp.asarray(need[None]), kappa, nu, jnp.asarray(cap[None]))
        moved = need * rng.uniform(0.98, 1.02, need.shape)  # the next step's needs
        r, _ = warm(jnp.asarray(moved[None]), kappa, nu, jnp.asarray(cap[None]), price)
        od = np.asarray(on_demand_gpus(jnp.asarray(moved[None]), r))[0]
        assert (od <= cap * (1 + 1e-9) + 1e-6).all()
        got = float(np.asarray(cycle_cost(jnp.asarray(moved), r[0], kappa, nu)).sum())
        excess.append(got / lp_reserve(moved, kappa, nu, cap)[0] - 1)
    assert min(excess) > -1e-9 and max(excess) < 5e-3 and np.median(excess) < 1e-4, excess
