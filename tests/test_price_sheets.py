"""Price sheets: products shared by segments, tiers, competitors and the nested logit — oracle tests.

Each scenario is small and solved end to end (``optimize``, relaxed fleet) by the structured dual;
the oracles are closed forms (ECONOMICS.md §2.3) or brute-force searches over the prices.
"""

import math

import numpy as np
import pytest

from optimizer import catalog
from optimizer.engine import optimize
from optimizer.problem import sheet_tie
from optimizer.schema import (CompetitorConfig, DemandConfig, FleetConfig, OfferConfig, ProductConfig, RunConfig,
                              SegmentConfig, SolverConfig)
from tests.scenarios import segment


def product(model="llama-3p1-8b", tier="standard", price=(0.2, 0.02, 0.6), **kw) -> ProductConfig:
    return ProductConfig(model=model, tier=tier, input_usd_per_mtok=price[0], cached_input_usd_per_mtok=price[1],
                         output_usd_per_mtok=price[2], price_source="test", **kw)


def buyer(products: dict, demand="logit", elasticity=1.5, isl=1000.0, osl=250.0, tpot_ms=50.0, **kw) -> SegmentConfig:
    return SegmentConfig(products=products, input_tokens_per_day=1e10, isl=isl, osl=osl, demand=demand,
                         elasticity=elasticity, tpot_ms=tpot_ms, peak_to_mean=1.5, **kw)


def contract(elasticity, isl=1000.0, osl=250.0) -> SegmentConfig:
    """A constant-elasticity segment with its own prices for the 8B (an offer: a contract)."""
    offers = {"llama-3p1-8b": OfferConfig(input_usd_per_mtok=0.2, output_usd_per_mtok=0.6, price_source="test")}
    return SegmentConfig(offers=offers, input_tokens_per_day=1e10, isl=isl, osl=osl, demand="constant_elasticity",
                         elasticity=elasticity, tpot_ms=50.0, peak_to_mean=1.5)


def competitor(price=(0.2, 0.2, 0.6), **kw) -> CompetitorConfig:
    return CompetitorConfig(provider="them", model="llama-3p1-8b", input_usd_per_mtok=price[0],
                            cached_input_usd_per_mtok=price[1], output_usd_per_mtok=price[2], date="test",
                            price_source="test", **kw)


def config(segments, products=None, competitors=None, gpus=("h100-sxm",)) -> RunConfig:
    return RunConfig(demand=DemandConfig(name="test", segments=segments, products=products or {},
                                         competitors=competitors or {}),
                     fleet=FleetConfig(gpus=list(gpus), precisions=["fp8"]),
                     solver=SolverConfig(integer_fleet=False), efficiency=catalog.load_efficiency("calibrated"))


def unit_cost(prob, s, j):
    """USD per request of flow (s, j) on its only pool, sized at peak: κ · GPU-s · $/GPU-s / ρ_peak."""
    g_s = np.asarray(prob.gpu_s_per_request)[s, j].max()
    return (float(prob.peak_to_mean[s]) * g_s * float(prob.usd_per_gpu_hour[0]) / 3600.0
            / float(prob.peak_utilization))


def nested_profit(prob, s, prices, costs):
    """USD/day of segment s at per-request prices ``prices`` (..., J), by the nested logit of
    kernels/demand.py written out in NumPy (competitors at their scenario utilities)."""
    d = prob.demand
    lam = float(d.nest[s])
    offer = np.asarray(d.offer_mask)[s] > 0
    v = np.asarray(d.alpha)[s][offer] - float(d.beta[s]) * prices
    comp = np.asarray(d.comp_utility)[s][np.asarray(d.comp_mask)[s] > 0]
    iv_o = lam * np.log(np.exp(v / lam).sum(-1))
    iv_c = lam * np.log(np.exp(comp / lam).sum()) if comp.size else -np.inf
    share = np.exp(v / lam) / np.exp(v / lam).sum(-1, keepdims=True) * (
        np.exp(iv_o) / (1 + np.exp(iv_o) + np.exp(iv_c)))[..., None]
    return float(d.market[s]) * (share * (prices - costs)).sum(-1)


def test_sheet_tie_frees_as_many_prices_as_the_buyers_token_mixes_identify():
    assert sheet_tie(np.asarray([[1.0, 0.0, 2.0]])) == (0, 0, 0)  # one buyer: one multiplier
    assert sheet_tie(np.asarray([[1.0, 0.0, 2.0], [2.0, 0.0, 4.0]])) == (0, 0, 0)  # proportional mixes
    assert sheet_tie(np.asarray([[1.0, 0.0, 2.0], [5.0, 0.0, 1.0]])) == (0, 0, 2)  # input and output apart
    assert sheet_tie(np.asarray([[1.0, 0.5, 2.0], [5.0, 0.1, 1.0], [1.0, 3.0, 1.0]])) == (0, 1, 2)


@pytest.mark.parametrize("nest", [0.5])  # nest 1 (MNL) is the Lambert-W oracle of tests/test_optimizer.py
def test_multi_product_nested_logit_equal_markup_and_brute_force(nest):
    """ECONOMICS.md §2.3: with competitors in their own nest, every product of ours carries the same
    markup ``1 / (β (1 − S_ours))``, and no pair of prices on a grid earns more."""
    seg = segment(demand="logit", elasticity=1.5, models=("llama-3p1-8b", "llama-3p3-70b"), price=(0.2, 0.6),
                  competitors={"them": 0.3}, nest_parameter=nest, ref_market_share=0.3)
    res = optimize(config({"chat": seg}, competitors={"them": competitor()}))
    assert res.status == "converged" and res.stages["relaxed"].method == "dual"
    prob, b = res.prob, res.relaxed_breakdown
    c = np.asarray([unit_cost(prob, 0, j) for j in range(2)])
    p = np.asarray(b.price_per_request)[0]
    beta, market = float(prob.demand.beta[0]), float(prob.demand.market[0])
    ours = float(np.asarray(b.requests_per_day).sum()) / market
    np.testing.assert_allclose(p - c, 1.0 / (beta * (1.0 - ours)), rtol=1e-4)
    # brute force over both prices around the optimum
    grid = np.linspace(0.7, 1.3, 121)
    pp = np.stack(np.meshgrid(p[0] * grid, p[1] * grid, indexing="ij"), -1)  # (121, 121, 2)
    best = nested_profit(prob, 0, pp.reshape(-1, 2), c).max()
    at_opt = nested_profit(prob, 0, p[None], c)[0]
    assert at_opt >= best - 1e-9 * abs(best)
    assert float(b.margin) == pytest.approx(at_opt, rel=1e-6)


def test_one_shared_price_over_two_constant_elasticity_segments_matches_1d_brute_force():
    """Two segments with proportional token mixes pay one product's sheet, so one multiplier sets
    both prices; the optimum is the best multiplier of a fine 1-D search."""
    segs = {"a": buyer({"p": 1.0}, demand="constant_elasticity", elasticity=2.0),
            "b": buyer({"p": 1.0}, demand="constant_elasticity", elasticity=3.0, isl=2000.0, osl=500.0)}
    res = optimize(config(segs, {"p": product()}))
    assert res.status == "converged"
    prob, b = res.prob, res.relaxed_breakdown
    assert np.asarray(prob.sheet_tie).tolist() == [[0, 0, 0]]
    c = np.asarray([unit_cost(prob, s, 0) for s in range(2)])
    p_ref = np.asarray(prob.demand.ref_price)[:, 0]
    d_ref = np.asarray(prob.demand.ref_demand)[:, 0]
    eps = np.asarray([2.0, 3.0])
    m = np.exp(np.linspace(np.log(0.2), np.log(5.0), 200001))[:, None]
    profit = (d_ref * m ** (-eps) * (m * p_ref - c)).sum(-1)
    m_best = float(m[np.argmax(profit), 0])
    mult = np.asarray(b.price_multiplier)[:, 0]
    np.testing.assert_allclose(mult, m_best, rtol=1e-4)
    assert float(b.margin) == pytest.approx(profit.max(), rel=1e-7)
    # the plan's shared price lies strictly between the two segments' own Lerner prices
    lerner = c * eps / (eps - 1) / p_ref
    assert min(lerner) < m_best < max(lerner)


def test_per_segment_pricing_never_earns_less_than_a_shared_sheet():
    """The same two segments buying the same model: contracts (one price each) against one public
    sheet; per-segment prices are a relaxation of the shared ones, and differ here."""
    shared = optimize(config({"a": buyer({"p": 1.0}, demand="constant_elasticity", elasticity=2.0),
                              "b": buyer({"p": 1.0}, demand="constant_elasticity", elasticity=3.0,
                                         isl=2000.0, osl=500.0)}, {"p": product()}))
    own = optimize(config({"a": contract(elasticity=2.0), "b": contract(elasticity=3.0, isl=2000.0, osl=500.0)}))
    assert shared.status == own.status == "converged"
    ms, mo = float(shared.relaxed_breakdown.margin), float(own.relaxed_breakdown.margin)
    assert mo >= ms
    assert mo > ms * (1 + 1e-4)  # elasticities differ, so discrimination pays
    # the dual's bound for the shared sheet is the per-segment optimum
    assert float(shared.relaxed.bound) == pytest.approx(mo, rel=1e-3)


def test_priority_premium_covers_its_extra_serving_cost_when_its_segment_values_speed():
    """A priority product (TPOT ≤ 20 ms) costs more to serve than the standard one (50 ms): its
    premium per request at the optimum is at least the extra cost."""
    segs = {"fast": buyer({"pri": 1.0}, latency_sensitivity=0.02, ref_tpot_ms=50.0, ref_market_share=0.2),
            "std": buyer({"std": 1.0}, ref_market_share=0.2)}
    prods = {"pri": product(tier="priority", price=(0.4, 0.04, 1.2)), "std": product()}
    res = optimize(config(segs, prods))
    assert res.status == "converged"
    prob, b = res.prob, res.relaxed_breakdown
    c_pri, c_std = unit_cost(prob, 0, 0), unit_cost(prob, 1, 0)
    assert c_pri > c_std  # the tighter TPOT means smaller batches
    p = np.asarray(b.price_per_request)[:, 0]
    assert p[0] - p[1] >= c_pri - c_std
    assert float(np.asarray(prob.tpot_ms)[0].max()) <= 20.0 + 1e-9


def test_competitor_price_cut_never_raises_our_optimal_price_or_share():
    prices, volumes = [], []
    for ratio in (1.0, 0.7, 0.4):
        seg = segment(demand="logit", elasticity=1.5, price=(0.2, 0.6), competitors={"them": 0.3},
                      nest_parameter=0.7)
        comp = competitor(output_price_ratio=ratio, input_price_ratio=ratio, cached_input_price_ratio=ratio)
        res = optimize(config({"chat": seg}, competitors={"them": comp}))
        assert res.status == "converged"
        prices.append(float(res.relaxed_breakdown.price_per_request[0, 0]))
        volumes.append(float(res.relaxed_breakdown.requests_per_day[0, 0]))
    assert all(np.diff(prices) < 0) and all(np.diff(volumes) < 0)
    assert math.isfinite(prices[-1])
