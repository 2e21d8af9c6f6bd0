"""The margin optimizer against closed-form optima, a brute-force grid and finite differences.

Every oracle runs once per solver (``solver.method``): the structured dual and the augmented
Lagrangian each meet it on their own."""

import math
from dataclasses import replace

import jax
import numpy as np
import pytest
from scipy.special import lambertw

from optimizer.constraints import active_mask
from optimizer.decision import initial_decisions
from optimizer.engine import optimize
from optimizer.errors import ConfigError
from optimizer.objective import evaluate
from optimizer.problem import build_problem
from optimizer.solve import AugLag, relaxed_task
from optimizer.solve.auglag import multistart, run_starts_jit
from tests.scenarios import run_config, segment

SOLVERS = pytest.mark.parametrize("method", ["dual", "auglag"])


def marginal_cost_per_request(prob, s=0, j=0, k=0, g=0):
    """USD per request of sizing a pool at peak: κ · GPU-s/request · $/GPU-s / ρ_peak."""
    return (float(prob.peak_to_mean[s]) * float(prob.gpu_s_per_request[s, j, k, g])
            * float(prob.usd_per_gpu_hour[g]) / 3600.0 / float(prob.peak_utilization))


@SOLVERS
def test_constant_elasticity_markup_oracle(method):
    # ECONOMICS.md §2.1: p* = c · ε/(ε − 1), capacity unconstrained
    for eps in (1.5, 2.0, 3.0):
        cfg = run_config({"chat": segment(elasticity=eps)}, method=method)
        res = optimize(cfg)
        assert res.stages["relaxed"].method == method
        assert res.status == "converged"
        c = marginal_cost_per_request(res.prob)
        p = float(res.relaxed_breakdown.price_per_request[0, 0])
        assert p == pytest.approx(c * eps / (eps - 1), rel=1e-3)


@SOLVERS
def test_scaling_market_size_does_not_move_ce_price(method):
    a = optimize(run_config({"chat": segment(elasticity=2.0, volume=1e9)}, method=method))
    b = optimize(run_config({"chat": segment(elasticity=2.0, volume=1e11)}, method=method))
    pa, pb = float(a.relaxed_breakdown.price_per_request[0, 0]), float(b.relaxed_breakdown.price_per_request[0, 0])
    assert pa == pytest.approx(pb, rel=1e-3)


@SOLVERS
def test_logit_lambert_w_oracle(method):
    # ECONOMICS.md §2.2: p* = c + (1 + W(e^(a − b c − 1))) / b for one product with an outside option
    for eps, share in ((1.2, 0.3), (2.5, 0.1), (0.8, 0.5)):
        cfg = run_config({"chat": segment(demand="logit", elasticity=eps, ref_market_share=share)},
                         precisions=("bf16",), method=method)
        res = optimize(cfg)
        assert res.status == "converged"
        dp = res.prob.demand
        a, b = float(dp.alpha[0, 0]), float(dp.beta[0])
        c = marginal_cost_per_request(res.prob)
        w = float(np.real(lambertw(math.exp(a - b * c - 1.0))))
        p_star = c + (1.0 + w) / b
        assert float(res.relaxed_breakdown.price_per_request[0, 0]) == pytest.approx(p_star, rel=1e-3)
        m_star = float(dp.market[0]) * w / b
        assert float(res.relaxed_breakdown.margin) == pytest.approx(m_star, rel=1e-3)


@SOLVERS
def test_capacity_bound_price_rises_until_demand_equals_capacity(method):
    eps = 2.0
    free = optimize(run_config({"chat": segment(elasticity=eps)}, method=method))
    need = float(np.asarray(free.relaxed_breakdown.gpus).sum())
    cap = 0.5 * need
    res = optimize(run_config({"chat": segment(elasticity=eps)}, gpu_caps={"h100-sxm": cap}, method=method))
    assert res.status == "converged"
    b = res.relaxed_breakdown
    assert float(np.asarray(b.gpus).sum()) == pytest.approx(cap, rel=1e-3)
    # the price at which demand exactly fills the capped fleet: D(p) = cap · ρ · 86400 / (κ · g)
    prob = res.prob
    d_cap = cap * float(prob.peak_utilization) * 86400 / (float(prob.peak_to_mean[0]) * float(prob.gpu_s_per_request[0, 0, 0, 0]))
    p_ref, d_ref = float(prob.demand.ref_price[0, 0]), float(prob.demand.ref_demand[0, 0])
    p_cap = p_ref * (d_cap / d_ref) ** (-1 / eps)
    assert float(b.price_per_request[0, 0]) == pytest.approx(p_cap, rel=2e-3)
    assert float(b.price_per_request[0, 0]) > float(free.relaxed_breakdown.price_per_request[0, 0])
    assert float(res.relaxed.multipliers[0]) > 0  # the cap's shadow price is positive


def _brute_force_segment(prob, s, grid=401):
    """Best margin of one interactive logit segment over a precision-mix grid, with the exact
    Lambert-W price at each mix and the cheapest GPU type for each precision."""
    dp = prob.demand
    g_s = np.asarray(prob.gpu_s_per_request)[s, 0]  # (K, G)
    mask = np.asarray(prob.route_mask)[s, 0]
    h = np.asarray(prob.usd_per_gpu_hour)
    per_k = np.where(mask > 0, g_s * h[None] / 3600.0, np.inf).min(1) * float(prob.peak_to_mean[s]) / float(
        prob.peak_utilization)  # (K,) USD per request of the cheapest GPU
    q = np.asarray(prob.quality)[0]
    a0, b, M = float(dp.alpha[s, 0]), float(dp.beta[s]), float(dp.market[s])
    gamma = float(dp.quality_sens[s])
    best, best_x = -np.inf, None
    for x in np.linspace(0, 1, grid):
        c = x * per_k[0] + (1 - x) * per_k[1]
        a = a0 + gamma * 100 * (x * q[0] + (1 - x) * q[1] - 1.0)
        w = float(np.real(lambertw(math.exp(a - b * c - 1.0))))
        if M * w / b > best:
            best, best_x = M * w / b, x
    return best, best_x


@SOLVERS
def test_small_instance_agrees_with_brute_force_grid(method):
    segs = {"quality_first": segment(demand="logit", elasticity=1.2, quality_sensitivity=2.0, peak_to_mean=1.5),
            "price_first": segment(demand="logit", elasticity=3.0, quality_sensitivity=0.02, peak_to_mean=1.5,
                                   volume=3e10)}
    cfg = run_config(segs, gpus=("h100-sxm", "h200-sxm"), precisions=("fp8", "int4"), method=method)
    res = optimize(cfg)
    assert res.status == "converged"
    grid = [_brute_force_segment(res.prob, s) for s in range(2)]
    brute = sum(m for m, _ in grid)
    got = float(res.relaxed_breakdown.margin)
    assert got == pytest.approx(brute, rel=1e-4)
    assert got <= brute * (1 + 1e-4)  # the grid with exact prices is (near) an upper bound
    # each segment's FP8 share is the grid's best mix (the price-sensitive one too: INT4's lower
    # quality costs it more demand than its lower cost saves)
    mix = np.asarray(res.relaxed_breakdown.mix)[:, 0]
    np.testing.assert_allclose(mix[:, 0], [x for _, x in grid], atol=1e-3)


@pytest.mark.slow  # 34 s; the dual batch is checked in test_dual; in the nightly command (README)
def test_batched_rows_equal_looped_solves_and_no_recompile():
    cfg = run_config({"chat": segment(demand="logit", elasticity=1.5)}, gpus=("h100-sxm", "h200-sxm"))
    prob, labels = build_problem(cfg)
    solver = AugLag(outer_steps=6, inner_steps=40)
    task = relaxed_task(prob, active_mask(labels, prob, False))
    dec0 = initial_decisions(prob, 3, 0)
    _, batched = run_starts_jit(solver, task, dec0)
    for i in range(3):
        one = jax.jit(solver.run)(task, jax.tree.map(lambda x: x[i], dec0))
        np.testing.assert_allclose(float(one.objective), float(batched.objective[i]), rtol=1e-9)
        np.testing.assert_allclose(np.asarray(one.decision.price_raw), np.asarray(batched.decision.price_raw[i]),
                                   rtol=1e-8, atol=1e-10)
    # a second solve with other numbers of the same shapes reuses the compiled program
    multistart(solver, task, 8, 0)
    n = run_starts_jit._cache_size()
    prob2 = prob._replace(usd_per_gpu_hour=prob.usd_per_gpu_hour * 1.3)
    multistart(solver, task._replace(problem=prob2), 8, 1)
    assert run_starts_jit._cache_size() == n


@SOLVERS
def test_margin_gradients_match_finite_differences(method):
    cfg = run_config({"chat": segment(demand="logit", elasticity=1.5, quality_sensitivity=0.3)},
                     gpus=("h100-sxm", "h200-sxm"), precisions=("fp8", "int4"), method=method)
    res = optimize(cfg)
    dec, prob = res.relaxed.decision, res.prob

    def margin_of(price_scale, beta_scale):
        p = prob._replace(usd_per_gpu_hour=prob.usd_per_gpu_hour * price_scale,
                          demand=prob.demand._replace(beta=prob.demand.beta * beta_scale))
        return evaluate(dec, p).margin

    for arg in (0, 1):
        g = float(jax.grad(margin_of, argnums=arg)(1.0, 1.0))
        h = 1e-6
        args_p = [1.0, 1.0]
        args_m = [1.0, 1.0]
        args_p[arg] += h
        args_m[arg] -= h
        fd = (float(margin_of(*args_p)) - float(margin_of(*args_m))) / (2 * h)
        assert g == pytest.approx(fd, rel=1e-5)
    # envelope theorem: d(optimal margin)/d(GPU price scale) = −GPU cost at the optimum
    up = optimize(replace(cfg, fleet=replace(cfg.fleet, price_usd_per_gpu_hour={
        "h100-sxm": 2.69 * 1.01, "h200-sxm": 3.59 * 1.01})))
    dn = optimize(replace(cfg, fleet=replace(cfg.fleet, price_usd_per_gpu_hour={
        "h100-sxm": 2.69 * 0.99, "h200-sxm": 3.59 * 0.99})))
    fd_opt = (float(up.relaxed_breakdown.margin) - float(dn.relaxed_breakdown.margin)) / 0.02
    assert fd_opt == pytest.approx(-float(res.relaxed_breakdown.gpu_cost), rel=2e-2)


@SOLVERS
def test_integer_fleet_is_whole_replicas_and_feasible(method):
    cfg = run_config({"chat": segment(demand="logit", elasticity=1.5, volume=2e9)}, gpus=("h100-sxm", "h200-sxm"),
                     precisions=("fp8",), integer=True, method=method)
    res = optimize(cfg)
    assert res.status == "converged"
    tp = np.asarray(res.prob.tp)
    fleet = res.fleet
    assert np.all(np.abs(fleet / np.maximum(tp, 1) - np.round(fleet / np.maximum(tp, 1))) < 1e-9)
    b = res.final_breakdown
    assert np.all(np.asarray(b.peak_load) / float(res.prob.peak_utilization) <= fleet * (1 + 1e-3) + 1e-9)
    assert res.integrality_loss_usd_per_day is not None
    assert res.integrality_loss_usd_per_day >= -1e-3 * abs(float(res.relaxed_breakdown.margin))


def test_bad_inputs_give_clear_errors():
    with pytest.raises(ConfigError, match="elasticity = 0.9: accepted a number > 1 with demand=constant_elasticity"):
        build_problem(run_config({"chat": segment(elasticity=0.9)}))
    with pytest.raises(ConfigError, match="input_tokens_per_day"):
        build_problem(run_config({"chat": segment(volume=-5.0)}))
    with pytest.raises(ConfigError, match=r"offers.llama-3p1-8b.input_usd_per_mtok = -0.1: accepted a number > 0"):
        build_problem(run_config({"chat": segment(price=(-0.1, 0.5))}))
    with pytest.raises(ConfigError, match="fits none of the fleet's GPUs"):
        build_problem(run_config({"chat": segment(models=("llama-3p1-405b",))}, gpus=("l40s",)))
    with pytest.raises(ConfigError, match="segment 'chat' has no feasible deployment"):
        build_problem(run_config({"chat": segment(tpot_ms=0.5)}))
    with pytest.raises(ConfigError, match="tier"):
        build_problem(run_config({"chat": segment(tier="premium")}))
    with pytest.raises(ConfigError, match="fleet.precisions"):
        build_problem(run_config({"chat": segment()}, precisions=("fp16",)))


def test_the_default_scenario_with_quality_floors_converges_to_a_plan_that_meets_them():
    """Quality floors send a run to the augmented Lagrangian. On the default scenario with floors
    on two segments it ended at the step limit (no recommended plan) with the PHR penalty at 20,
    after 30 and after 60 outer steps; at the default 100 both stages converge, every floor is met
    within the tolerance, and the floors cost margin against the same run without them."""
    from hydra import compose, initialize_config_dir

    from optimizer import aot
    from optimizer.catalog import to_schema
    from optimizer.schema import RunConfig, register_configs

    register_configs()
    floors = {"consumer_chat": 0.99, "agentic_coding": 0.995}
    with initialize_config_dir(config_dir=str(aot.ROOT / "conf"), version_base="1.3"):
        cfg = to_schema(compose(config_name="config", overrides=[f"demand.segments.{s}.min_quality={q}"
                                                                  for s, q in floors.items()]), RunConfig)
    res = optimize(cfg)
    assert res.ok and res.stages["relaxed"].status == "converged" and res.stages["relaxed"].method == "auglag"
    b = res.final_breakdown
    quality, offered = np.asarray(b.quality), np.asarray(res.prob.demand.offer_mask) > 0
    for seg, floor in floors.items():
        s = res.labels.segments.index(seg)
        assert (quality[s][offered[s]] >= floor - 1e-4 * floor).all()
    assert float(res.relaxed_breakdown.margin) < 51_857.78  # the default's relaxed optimum without floors


def test_the_check_against_the_dual_is_one_rule_on_the_host_and_in_a_batched_program():
    """optimizer.solve.check: which plan stands, case by case, the same in NumPy (a single run) as
    under jit(vmap) (a sweep's rows): a NaN bound checks nothing; a plan that ended infeasible or
    non-finite gives way to a dual plan that meets every constraint; a feasible one only to a dual
    plan better by more than tol_gap of the bound; an infeasible dual plan never replaces anything."""
    import jax
    import jax.numpy as jnp

    from optimizer.solve import RESULTS
    from optimizer.solve.check import Verdict, checked, floors_relaxed, meets_every_constraint, verdict

    ok, step, bad, nan = RESULTS.converged, RESULTS.step_limit, RESULTS.infeasible, RESULTS.non_finite
    # (result, margin, dual margin, bound, dual feasible) -> verdict, with tol_gap = 5e-3
    cases = [((ok, 100.0, 200.0, np.nan, True), Verdict.kept),
             ((ok, 100.0, 200.0, 210.0, True), Verdict.replaced_better),
             ((step, 100.0, 200.0, 210.0, False), Verdict.kept),
             ((ok, 199.0, 200.0, 210.0, True), Verdict.kept),  # 1 < 5e-3 x 210
             ((ok, 198.0, 200.0, 210.0, True), Verdict.replaced_better),
             ((bad, 900.0, 200.0, 210.0, True), Verdict.replaced_infeasible),
             ((nan, np.nan, 200.0, 210.0, True), Verdict.replaced_infeasible),
             ((bad, 900.0, 200.0, 210.0, False), Verdict.kept)]
    cols = [np.asarray(c) for c in zip(*(args for args, _ in cases))]
    want = np.asarray([int(v) for _, v in cases])
    host = np.asarray([verdict(*args, 5e-3) for args, _ in cases])
    batched = jax.jit(jax.vmap(lambda *a: verdict(*a, 5e-3)))(*cols)
    np.testing.assert_array_equal(host, want)
    np.testing.assert_array_equal(np.asarray(batched), want)
    # feasibility counts active constraints only, and a non-finite margin is never feasible
    g, on = np.asarray([0.5, -0.2, 2e-5]), np.asarray([0.0, 1.0, 1.0])
    assert meets_every_constraint(1.0, g, on, 1e-4) and not meets_every_constraint(1.0, g, on, 1e-5)
    assert not meets_every_constraint(np.inf, g, on, 1e-4)
    assert bool(jax.jit(meets_every_constraint, static_argnums=3)(1.0, jnp.asarray(g), jnp.asarray(on), 1e-4))
    # quality floors (after G caps and the two budgets) are switched off; caps and budgets stay
    np.testing.assert_array_equal(floors_relaxed(np.asarray([1.0, 0.0, 1.0, 1.0, 1.0, 1.0]), 2), [1, 0, 1, 1, 0, 0])
    # the kept plan carries the dual's bound and the gap to it; a replaced one is the dual's
    from optimizer.solve.base import Solution, Stats

    def sol(margin, bound):
        z = np.asarray(0.0)
        return Solution(None, np.asarray(0), -np.asarray(margin), np.asarray(margin), z, np.zeros(3),
                        np.asarray(bound), np.asarray(np.nan), Stats(z, z, z))

    # the dual's plan is the augmented Lagrangian's last start (host-side, the others as generated)
    from optimizer.decision import initial_decisions
    from optimizer.solve.auglag import start_decisions

    prob, _ = build_problem(run_config({"chat": segment()}))
    gen = initial_decisions(prob, 4, 0)
    plan = jax.tree.map(lambda x: np.full(np.shape(x)[1:], 0.25), gen)
    dec0 = start_decisions(prob, 4, 0, plan)
    for got, g, p in zip(dec0, gen, plan):
        assert isinstance(got, np.ndarray)
        np.testing.assert_array_equal(got[:-1], g[:-1])
        np.testing.assert_array_equal(got[-1], p)
    mine, dual = sol(100.0, np.nan), sol(104.0, 110.0)
    kept = checked(mine, dual, int(Verdict.kept))
    assert float(kept.margin) == 100.0 and float(kept.bound) == 110.0
    assert float(kept.gap) == pytest.approx(10.0 / 110.0, rel=1e-12)
    assert float(checked(mine, dual, int(Verdict.replaced_better)).margin) == 104.0
    assert np.isnan(float(checked(mine, sol(104.0, np.nan), int(Verdict.kept)).bound))


def test_a_stationary_point_of_the_augmented_lagrangian_never_stands_where_the_dual_earns_more():
    """``against_dual``: an augmented-Lagrangian plan that prices every product far above what buyers
    pay sells nothing and is flat there (stationary, so its own test can say converged); the check
    replaces it with the dual's plan, which meets every constraint and earns more, and says so; an
    infeasible plan is replaced too. A plan as good as the dual's is kept, with the dual's bound
    (which bounds both) and its gap."""
    import jax.numpy as jnp

    from optimizer.catalog import to_schema
    from optimizer.decision import raw_price, reference_decision
    from optimizer.engine import against_dual, checking_solve
    from optimizer.schema import RunConfig, register_configs
    from optimizer.solve import RESULTS
    from optimizer.solve.base import Solution, Stats
    from hydra import compose, initialize_config_dir

    from optimizer import aot

    register_configs()
    with initialize_config_dir(config_dir=str(aot.ROOT / "conf"), version_base="1.3"):
        cfg = to_schema(compose(config_name="config", overrides=["time=single", "solver.method=auglag"]), RunConfig)
    prob, labels = build_problem(cfg)
    active = active_mask(labels, prob, fixed_fleet=False)
    R = np.shape(prob.sheet_ref)[0]
    dead = reference_decision(prob)
    dead = dead._replace(price_raw=raw_price(jnp.full((R, 3), np.log(5.0)), prob))  # 5x every list price
    b = evaluate(dead, prob, None, active)
    C = np.shape(active)[0]
    stuck = Solution(dead, jnp.asarray(RESULTS.converged.value), -b.margin / prob.scale, b.margin, jnp.asarray(0.0),
                     jnp.zeros(C), jnp.asarray(np.nan), jnp.asarray(np.nan), Stats(jnp.asarray(1), jnp.asarray(1), jnp.asarray(0.0)))
    dsol = checking_solve(prob, active, cfg, labels.has_shared_products)
    checked = against_dual(prob, active, cfg, stuck, dsol)
    assert checked.method == "dual" and "below the dual's plan" in checked.note
    assert float(checked.solution.margin) > 2.0 * float(b.margin) > 0.0
    assert float(checked.solution.bound) >= float(checked.solution.margin)
    # a plan that breaks a constraint never stands beside one that meets them all, whatever it earns
    broken = stuck._replace(result=jnp.asarray(RESULTS.infeasible.value), margin=10.0 * checked.solution.margin)
    fixed = against_dual(prob, active, cfg, broken, dsol)
    assert fixed.method == "dual" and "ended infeasible" in fixed.note
    assert float(fixed.solution.margin) == float(checked.solution.margin)
    # the dual's own plan, handed in as the augmented Lagrangian's, stands, bounded by the same bound
    kept = against_dual(prob, active, cfg, checked.solution._replace(bound=jnp.asarray(np.nan)), dsol)
    assert kept.method == "auglag" and kept.note == ""
    assert float(kept.solution.margin) == float(checked.solution.margin)
    assert float(kept.solution.bound) >= float(kept.solution.margin)
    bound, margin = float(kept.solution.bound), float(kept.solution.margin)
    assert float(kept.solution.gap) == pytest.approx((bound - margin) / bound, rel=1e-12)
    assert 0.0 <= float(kept.solution.gap) < 0.1  # shared sheets: the bound includes per-segment pricing's value
