"""Demand kernels: calibration to the reference point, elasticities, jit / grad / vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels.demand import DemandParams, calibrate_logit, demand
from tests.helpers import assert_grad_matches_fd


def params(is_logit=True, eps=1.5, share=0.3, gamma=0.2, delta=0.01, comp=(), nest=1.0, comp_price_ratio=1.0):
    """One segment, three models (the third not offered); ``comp``: competitors' market shares, at
    reference prices 0.003 USD/request each (× ``comp_price_ratio`` in the scenario)."""
    f = lambda x: jnp.asarray(x, jnp.float64)  # noqa: E731
    ref_price = f([[0.002, 0.004, 1.0]])
    offer = f([[1.0, 1.0, 0.0]])  # third model not offered
    w = f([[0.6, 0.4, 0.0]])
    vol = f([1e6])
    comp_share = f([list(comp)]).reshape(1, len(comp))
    market, beta, alpha, comp_alpha = calibrate_logit(ref_price, w, offer, vol, f([share]), f([eps]),
                                                      comp_share, f([nest]))
    comp_ref = jnp.full((1, len(comp)), 0.003)
    return DemandParams(ref_demand=vol[:, None] * w, ref_price=ref_price, offer_mask=offer,
                        is_logit=jnp.asarray([is_logit]), elasticity=f([eps]), market=market, beta=beta,
                        alpha=alpha, quality_sens=f([gamma]), latency_sens=f([delta]),
                        ref_quality=jnp.ones((1, 3)), ref_latency_ms=f([50.0]),
                        comp_utility=comp_alpha - beta[:, None] * comp_ref * (comp_price_ratio - 1.0),
                        comp_mask=(comp_share > 0).astype(jnp.float64), nest=f([nest]))


@pytest.mark.parametrize("nest", [1.0, 0.6])
def test_nested_logit_reproduces_reference_volumes_and_our_elasticity(nest):
    """With competitors holding 20 % and 10 % of the market and nest parameter λ, the reference point
    gives our volumes back and ``elasticity`` is our own-price elasticity: of our whole volume when all
    our prices move together (finite difference of log demand)."""
    p = params(comp=(0.2, 0.1), nest=nest, eps=1.3)
    q, lat = jnp.ones((1, 3)), jnp.asarray([50.0])
    np.testing.assert_allclose(np.asarray(demand(p.ref_price, q, lat, p)), [[6e5, 4e5, 0.0]], rtol=1e-12)
    h = 1e-6
    up, down = (demand(p.ref_price * np.exp(x), q, lat, p).sum() for x in (h, -h))
    np.testing.assert_allclose(-(jnp.log(up) - jnp.log(down)) / (2 * h), 1.3, rtol=1e-6)


def test_competitor_price_cut_lowers_our_demand_more_with_a_tighter_nest_of_theirs():
    """A competitor's price cut takes volume from us; at λ = 1 the competitors sit in one nest with
    substitution as in MNL, and the cut's effect matches the MNL formula: our share falls by the
    factor (1 + Σ e^v) / (1 + Σ e^v') of the denominators."""
    q, lat = jnp.ones((1, 3)), jnp.asarray([50.0])
    base = params(comp=(0.2, 0.1))
    cut = params(comp=(0.2, 0.1), comp_price_ratio=0.5)
    d0, d1 = (float(demand(p.ref_price, q, lat, p).sum()) for p in (base, cut))
    assert d1 < d0
    ev0 = np.exp(np.asarray(base.alpha[0, :2]) - np.asarray(base.beta[0]) * np.asarray(base.ref_price[0, :2]))
    evc0, evc1 = np.exp(np.asarray(base.comp_utility[0])), np.exp(np.asarray(cut.comp_utility[0]))
    expected = (1 + ev0.sum() + evc0.sum()) / (1 + ev0.sum() + evc1.sum())
    np.testing.assert_allclose(d1 / d0, expected, rtol=1e-12)


@pytest.mark.parametrize("is_logit", [True, False])
def test_reference_point_reproduces_reference_volume(is_logit):
    p = params(is_logit)
    d = demand(p.ref_price, jnp.ones((1, 3)), jnp.asarray([50.0]), p)
    np.testing.assert_allclose(np.asarray(d), [[6e5, 4e5, 0.0]], rtol=1e-12)


@pytest.mark.parametrize("is_logit", [True, False])
def test_aggregate_elasticity_at_reference(is_logit):
    p = params(is_logit, eps=1.5)

    def total(log_scale):  # all offered prices scaled together
        return jnp.log(demand(p.ref_price * jnp.exp(log_scale), jnp.ones((1, 3)), jnp.asarray([50.0]), p).sum())

    # logit: -d log D / d log p = beta * p_bar * (1 - s) = eps when all prices move together
    assert -float(jax.grad(total)(0.0)) == pytest.approx(1.5, rel=1e-9)


def test_quality_and_latency_move_demand_the_right_way():
    p = params()
    base = demand(p.ref_price, jnp.ones((1, 3)), jnp.asarray([50.0]), p)
    lower_q = demand(p.ref_price, jnp.full((1, 3), 0.97), jnp.asarray([50.0]), p)
    slower = demand(p.ref_price, jnp.ones((1, 3)), jnp.asarray([80.0]), p)
    assert float(lower_q.sum()) < float(base.sum()) and float(slower.sum()) < float(base.sum())


def test_demand_jit_grad_vmap_and_finite_differences():
    p = params()
    q = jnp.ones((1, 3))
    lat = jnp.asarray([50.0])
    f = lambda s: demand(p.ref_price * jnp.asarray([[s, 1.0, 1.0]]), q, lat, p)[0, 0]  # noqa: E731
    assert float(jax.jit(f)(1.3)) == pytest.approx(float(f(1.3)), rel=1e-12)
    assert_grad_matches_fd(f, 1.3, rtol=1e-6)
    assert_grad_matches_fd(lambda g: demand(p.ref_price, q * g, lat, p)[0, 1], 0.99, rtol=1e-6)
    scales = jnp.asarray([0.5, 1.0, 2.0])
    np.testing.assert_allclose(np.asarray(jax.vmap(f)(scales)), [float(f(s)) for s in scales], rtol=1e-12)
    # the masked-out offer has zero demand and a finite (zero) gradient
    g = jax.grad(lambda pr: demand(pr, q, lat, p).sum())(p.ref_price)
    assert np.all(np.isfinite(np.asarray(g))) and float(g[0, 2]) == 0.0
