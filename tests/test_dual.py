"""The structured dual solver: closed forms, weak duality, the envelope theorem, jit/vmap, and
agreement with the Adam + augmented-Lagrangian solver."""

import math
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import lambertw

from optimizer.constraints import active_mask
from optimizer.solve import Dual, DualStart
from optimizer.solve.dual import dual_bound, limit_excess, limit_mask, omega, plan_decision, primal, solve_dual
from optimizer.engine import optimize
from optimizer.objective import evaluate
from optimizer.problem import build_problem, scenario_inputs
from optimizer.schema import TimeConfig
from optimizer.solve.dual import pool_period_shape, split_charges, uniform_weight
from tests.scenarios import run_config, segment


def peak_batch_cfg():
    """Interactive logit chat and constant-elasticity batch sharing H100/H200 FP8 pools (the day as
    one period: the peak/daily split of the two-number model)."""
    return replace(run_config({"chat": segment(demand="logit", elasticity=1.5),
                               "batch": segment(tier="batch", elasticity=2.0, volume=5e9)},
                              gpus=("h100-sxm", "h200-sxm"), precisions=("fp8",)),
                   time=TimeConfig(periods=1, hours_per_period=24.0))


def test_value_gradient_and_hessian_in_one_pass_equal_jax_s():
    """The sheet Newton's one forward-over-reverse pass equals ``value_and_grad`` and ``hessian``
    (under ``jit``), and its Hessian is symmetric."""
    from optimizer.solve.dual import value_grad_hessian

    f = lambda x: jnp.sum(jnp.sin(x) * x[::-1] ** 3) + jnp.prod(jnp.cos(x)) + jnp.log1p(jnp.exp(x @ x))  # noqa: E731
    x = jnp.asarray([0.3, -1.2, 2.0, 0.7, -0.4])
    value, grad, hess = jax.jit(lambda x: value_grad_hessian(f, x))(x)
    np.testing.assert_allclose(value, f(x), rtol=1e-14)
    np.testing.assert_allclose(grad, jax.grad(f)(x), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(hess, jax.hessian(f)(x), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(hess, hess.T, rtol=1e-12, atol=1e-14)
    # against central differences of the gradient
    h = 1e-6
    fd = np.stack([(jax.grad(f)(x + h * e) - jax.grad(f)(x - h * e)) / (2 * h) for e in jnp.eye(5)])
    np.testing.assert_allclose(hess, fd, rtol=1e-6, atol=1e-6)


def test_omega_matches_scipy_lambert_w():
    x = np.concatenate([np.linspace(-30, 5, 200), np.linspace(5, 700, 200)])
    got = np.asarray(jax.jit(jax.vmap(omega))(jnp.asarray(x)))
    ref = np.asarray([np.real(lambertw(math.exp(v))) if v < 700 else np.nan for v in x])
    ok = np.isfinite(ref)
    np.testing.assert_allclose(got[ok], ref[ok], rtol=1e-12)
    # large x: w + log w = x holds
    np.testing.assert_allclose(got + np.log(got), x, rtol=1e-13)


def test_single_logit_offer_is_the_lambert_w_price():
    # ECONOMICS.md §2.2 with the peak-charged cost: μ = 1 on an interactive-only pool
    cfg = run_config({"chat": segment(demand="logit", elasticity=1.3, ref_market_share=0.2)}, precisions=("bf16",))
    prob, _ = build_problem(cfg)
    sol = solve_dual(prob, start(prob), Dual())
    assert float(sol.start.split.max()) == pytest.approx(1.0)
    dp = prob.demand
    a, b = float(dp.alpha[0, 0]), float(dp.beta[0])
    c = float(prob.usd_per_gpu_hour[0]) / 3600 * float(prob.gpu_s_per_request[0, 0, 0, 0]) * float(
        prob.peak_to_mean[0]) / float(prob.peak_utilization)
    w = float(np.real(lambertw(math.exp(a - b * c - 1.0))))
    assert float(sol.primal.price[0, 0]) == pytest.approx(c + (1 + w) / b, rel=1e-9)
    assert float(sol.primal.margin) == pytest.approx(float(dp.market[0]) * w / b, rel=1e-9)
    assert float(sol.bound) == pytest.approx(float(sol.primal.margin), rel=1e-9)


@pytest.mark.slow  # CI time (hours added to the model); in the nightly command (README)
def test_bound_is_valid_for_every_split_and_tight_at_the_optimum():
    cfg = peak_batch_cfg()
    res = optimize(replace(cfg, solver=replace(cfg.solver, method="auglag")))
    best = float(res.relaxed_breakdown.margin)  # augmented Lagrangian, 8 starts
    prob = res.prob
    rng = np.random.default_rng(0)
    mus = jnp.asarray(rng.uniform(0, 1, (32,) + pool_period_shape(prob)))
    bounds = np.asarray(jax.jit(jax.vmap(lambda m: dual_bound(m, prob)))(mus))
    assert (bounds >= best).all()  # weak duality, whatever the split
    sol = jax.jit(solve_dual, static_argnums=2)(prob, start(prob), Dual(steps=400))
    margin = float(evaluate(plan_decision(sol.primal, prob), prob).margin)
    assert best <= float(sol.bound) and margin <= float(sol.bound)
    assert margin == pytest.approx(best, rel=1e-3)
    assert float(sol.gap) < 2e-3
    # batch fills the off-peak valley: a pool that serves both has peak need == daily need
    shared = (np.asarray(sol.primal.peak_need) > 1e-6) & (np.asarray(sol.primal.daily_need) > 1e-6)
    assert shared.any()


@pytest.mark.slow  # CI time (hours added to the model); in the nightly command (README)
def test_envelope_gradient_of_the_dual_function():
    # ∂g/∂μ_p = −24·c_g·(peak need − daily need): finite differences and jax.grad agree
    prob = build_problem(peak_batch_cfg())[0]
    mu = jnp.full(pool_period_shape(prob), 0.3)
    x = primal(split_charges(mu, uniform_weight(mu.shape)), prob, 1e-9)
    envelope = -24.0 * np.asarray(prob.usd_per_gpu_hour)[:, None, None, None] * np.asarray(x.peak_need - x.daily_need)
    grad = np.asarray(jax.grad(lambda m: dual_bound(m, prob))(mu))
    np.testing.assert_allclose(grad, envelope, rtol=1e-6, atol=1e-6 * np.abs(envelope).max())
    for idx in zip(*np.nonzero(np.abs(envelope) > 0)):
        h = 1e-6
        up = dual_bound(mu.at[idx].add(h), prob)
        dn = dual_bound(mu.at[idx].add(-h), prob)
        assert float((up - dn) / (2 * h)) == pytest.approx(envelope[idx], rel=1e-4)


def test_vmapped_solve_equals_looped():
    prob = build_problem(peak_batch_cfg())[0]
    mus = jnp.stack([jnp.full(pool_period_shape(prob), v) for v in (0.2, 0.5, 0.9)])
    st = Dual(steps=30)
    batched = jax.jit(jax.vmap(lambda m: solve_dual(prob, start(prob, m), st)))(mus)
    for i in range(3):
        one = solve_dual(prob, start(prob, mus[i]), st)
        np.testing.assert_allclose(np.asarray(batched.primal.price[i]), np.asarray(one.primal.price), rtol=1e-10)
        assert float(batched.bound[i]) == pytest.approx(float(one.bound), rel=1e-10)


def start(prob, split=None):
    """An even split (or ``split``) and unpriced limits."""
    G = prob.usd_per_gpu_hour.shape[0]
    return DualStart(jnp.full(pool_period_shape(prob), 0.5) if split is None else split, jnp.zeros(G + 2))


def _solve_limited(cfg, steps=600):
    """The augmented Lagrangian (8 starts) and the dual solver on a scenario with caps or budgets."""
    res = optimize(replace(cfg, solver=replace(cfg.solver, method="auglag")))
    prob = res.prob
    _, _, labels = scenario_inputs(cfg)
    active = jnp.asarray(active_mask(labels, prob, fixed_fleet=False))
    sol = jax.jit(solve_dual, static_argnums=2)(prob, start(prob), Dual(steps=steps), active)
    return res, prob, active, sol


@pytest.mark.slow  # 35 s; caps are also priced in test_run / test_sweep; in the nightly command (README)
def test_gpu_cap_is_priced_until_demand_fills_the_capped_fleet():
    """The cap's price raises the GPU price until demand fits: the closed-form capacity price of
    test_optimizer, the Adam solution, and weak duality at random (μ, λ)."""
    eps = 2.0
    free = optimize(run_config({"chat": segment(elasticity=eps)}))
    cap = 0.5 * float(np.asarray(free.relaxed_breakdown.gpus).sum())
    res, prob, active, sol = _solve_limited(run_config({"chat": segment(elasticity=eps)}, gpu_caps={"h100-sxm": cap}))
    b = evaluate(plan_decision(sol.primal, prob), prob, None, active)
    assert float(jnp.max(b.constraints)) <= 1e-4  # feasible
    assert float(np.asarray(b.gpus).sum()) == pytest.approx(cap, rel=1e-3)
    d_cap = cap * float(prob.peak_utilization) * 86400 / (
        float(prob.peak_to_mean[0]) * float(prob.gpu_s_per_request[0, 0, 0, 0]))
    p_cap = float(prob.demand.ref_price[0, 0]) * (d_cap / float(prob.demand.ref_demand[0, 0])) ** (-1 / eps)
    assert float(b.price_per_request[0, 0]) == pytest.approx(p_cap, rel=2e-3)
    assert float(sol.start.limit_price[0]) > 0 and float(sol.start.limit_price[1]) == 0 and float(sol.start.limit_price[2]) == 0  # only the cap is priced
    best = float(res.relaxed_breakdown.margin)
    assert float(b.margin) == pytest.approx(best, rel=1e-3)
    # plans may exceed a cap by the 1e-4 feasibility tolerance, and so the exact problem's bound by λ·1e-4
    assert best <= float(sol.bound) * (1 + 1e-4) and -1e-4 <= float(sol.gap) < 5e-3
    rng = np.random.default_rng(1)
    mus = jnp.asarray(rng.uniform(0, 1, (16,) + pool_period_shape(prob)))
    lams = jnp.asarray(rng.uniform(0, 3, (16, 3)))
    bounds = np.asarray(jax.vmap(lambda m, l: dual_bound(m, prob, l, active))(mus, lams))
    assert (bounds >= best).all()


def test_daily_budget_on_shared_pools_matches_adam():
    """A daily GPU budget below the free optimum's spend on the peak/batch scenario: the dual plan
    spends at most the budget and reaches the Adam margin."""
    free = optimize(peak_batch_cfg())
    spend = float(free.relaxed_breakdown.gpu_cost)
    cfg = peak_batch_cfg()
    cfg = replace(cfg, fleet=replace(cfg.fleet, budget_usd_per_day=0.6 * spend))
    res, prob, active, sol = _solve_limited(cfg)
    assert res.status == "converged"
    b = evaluate(plan_decision(sol.primal, prob), prob, None, active)
    assert float(b.gpu_cost) <= 0.6 * spend * (1 + 1e-4)
    best = float(res.relaxed_breakdown.margin)
    assert float(b.margin) == pytest.approx(best, rel=1e-3)
    assert best <= float(sol.bound) * (1 + 1e-4) and -1e-4 <= float(sol.gap) < 5e-3
    assert float(sol.start.limit_price[2]) > 0  # the budget's price (index G)
    assert float(jnp.max(limit_excess(sol.primal, prob, limit_mask(prob, active)))) <= 1e-4


@pytest.mark.slow  # CI time (hours added to the model); in the nightly command (README)
def test_fixed_fleet_dual_prices_the_fleet_like_the_closed_form_and_the_augmented_lagrangian():
    """A fixed fleet of half the GPUs the free optimum needs: the fixed-fleet dual's price is the
    one at which demand fills the fleet, D(p) = N · ρ · 86400 / (κ · g); its bound holds; the
    augmented Lagrangian on the same fixed fleet reaches the same margin."""
    from optimizer.solve import AugLag, fixed_task
    from optimizer.solve.fleet import FleetDual

    eps = 2.0
    free = optimize(run_config({"chat": segment(elasticity=eps)}))
    prob, labels = free.prob, free.labels
    n = 0.5 * float(np.asarray(free.relaxed_breakdown.gpus).sum())
    fleet = np.zeros(prob.tp.shape)
    fleet[0, 0, 0] = n
    task = fixed_task(prob, active_mask(labels, prob, fixed_fleet=True), fleet)
    solver = FleetDual()
    sol = jax.jit(solver.run)(task, solver.init(task))
    assert int(sol.result) == 0 and float(sol.violation) <= 1e-4
    b = evaluate(sol.decision, prob, jnp.asarray(fleet))
    d_cap = n * float(prob.peak_utilization) * 86400 / (float(prob.peak_to_mean[0]) * float(prob.gpu_s_per_request[0, 0, 0, 0]))
    p_cap = float(prob.demand.ref_price[0, 0]) * (d_cap / float(prob.demand.ref_demand[0, 0])) ** (-1 / eps)
    assert float(b.price_per_request[0, 0]) == pytest.approx(p_cap, rel=2e-3)
    # the plan may exceed the fleet by the 1e-4 feasibility tolerance, and so the exact bound by about λ·1e-4
    assert float(b.margin) <= float(sol.bound) * (1 + 2e-4) and -2e-4 <= float(sol.gap) < 5e-3
    assert float(sol.multipliers[-2 * fleet.size]) > 0  # the pool's peak capacity is priced
    al = AugLag()
    ref = jax.jit(al.run)(task, sol.decision)
    assert int(ref.result) == 0
    assert float(ref.margin) == pytest.approx(float(b.margin), rel=1e-3)
    assert float(ref.margin) <= float(sol.bound) * (1 + 2e-4)  # weak duality for the other solver's plan


@pytest.mark.slow  # CI time (hours added to the model); in the nightly command (README)
def test_every_solver_restarts_from_a_solution_of_its_own():
    """``start_from(task, solution)`` inverts each solver's multipliers: the dual's limit prices and
    the fixed-fleet dual's capacity prices come back from the Solution they produced."""
    from optimizer.solve import fixed_task, relaxed_task
    from optimizer.solve.fleet import FleetDual

    eps = 2.0
    free = optimize(run_config({"chat": segment(elasticity=eps)}))
    cap = 0.5 * float(np.asarray(free.relaxed_breakdown.gpus).sum())
    cfg = run_config({"chat": segment(elasticity=eps)}, gpu_caps={"h100-sxm": cap})
    res, prob, active, _ = _solve_limited(cfg, steps=10)
    dual = Dual(steps=600)
    task = relaxed_task(prob, active)
    sol, state = jax.jit(dual.solve)(task, dual.init(task))
    np.testing.assert_allclose(dual.start_from(task, sol).limit_price, np.asarray(state.start.limit_price),
                               rtol=1e-9, atol=1e-12)
    fleet = np.zeros(prob.tp.shape)
    fleet[0, 0, 0] = cap
    ftask = fixed_task(prob, active_mask(res.labels, prob, fixed_fleet=True), fleet)
    fd = FleetDual()
    fsol, fstate = jax.jit(fd.solve)(ftask, fd.init(ftask))
    back = fd.start_from(ftask, fsol)
    np.testing.assert_allclose(back.peak_price, np.asarray(fstate.start.peak_price), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(back.daily_price, np.asarray(fstate.start.daily_price), rtol=1e-9, atol=1e-12)
