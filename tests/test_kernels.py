"""Kernels under jit, grad and vmap; gradients against finite differences; physical invariants."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels.cost import tco_gpu_hour, usd_per_mtok
from kernels.moe import distinct_expert_fraction
from kernels.roofline import Efficiency, decode_step, kv_bytes_per_sequence, max_batch, prefill_time
from kernels.serving import (Speculation, Workload, max_throughput_point, operating_point, slo_batch, slo_point)
from kernels.smooth import smooth_max_pos, smooth_min_pos, soft_clip_below
from kernels.speculative import expected_tokens_per_step
from tests.helpers import assert_grad_matches_fd

# --------------------------------------------------------------------------- smooth helpers


def test_smooth_max_bounds_and_gradients():
    a, b = jnp.asarray(3.0), jnp.asarray(2.0)
    m = smooth_max_pos(a, b)
    assert 3.0 <= float(m) <= 3.0 * 2 ** (1 / 20)
    assert float(smooth_max_pos(jnp.asarray(10.0), jnp.asarray(1.0))) == pytest.approx(10.0, rel=1e-12)
    assert float(smooth_min_pos(jnp.asarray(10.0), jnp.asarray(1.0))) == pytest.approx(1.0, rel=1e-12)
    assert_grad_matches_fd(lambda x: smooth_max_pos(x, 2.0), 2.0)  # at the kink
    assert_grad_matches_fd(lambda x: smooth_min_pos(x, 2.0), 2.1)
    # gradient stays finite at 0 and below (guarded log)
    g = jax.grad(lambda x: smooth_max_pos(x, 1.0))(0.0)
    assert np.isfinite(float(g))


def test_soft_clip_below_zero_cap():
    x = jnp.linspace(0.0, 1000.0, 11)
    y = soft_clip_below(x, 0.0, 16.0)
    assert np.all(np.asarray(y) <= 1e-9 + 0.0 + 16 * np.log(2))
    assert_grad_matches_fd(lambda t: soft_clip_below(t, 500.0, 16.0), 500.0)


# --------------------------------------------------------------------------- MoE and speculative


def test_distinct_experts_matches_formula_and_monte_carlo():
    # ECONOMICS.md §3.1: E=256, k=8 -> 163 experts at B=32, all 256 at B=256.
    f32 = float(distinct_expert_fraction(32.0, 256.0, 8.0)) * 256
    assert f32 == pytest.approx(256 * (1 - (1 - 8 / 256) ** 32), rel=1e-12)
    assert round(f32) == 163
    assert float(distinct_expert_fraction(256.0, 256.0, 8.0)) * 256 > 255.9
    rng = np.random.default_rng(0)
    sims = [len(set(np.concatenate([rng.choice(256, 8, replace=False) for _ in range(32)])))
            for _ in range(2000)]
    assert np.mean(sims) == pytest.approx(f32, rel=5e-3)
    assert_grad_matches_fd(lambda b: distinct_expert_fraction(b, 256.0, 8.0), 32.0)
    # dense model (k == E) stays finite with a finite gradient
    assert float(distinct_expert_fraction(7.0, 1.0, 1.0)) == pytest.approx(1.0)
    assert np.isfinite(float(jax.grad(distinct_expert_fraction)(7.0, 1.0, 1.0)))


def test_speculative_tokens_per_step():
    for a, k in [(0.8, 4), (0.5, 1), (0.0, 3), (0.9, 8)]:
        expect = sum(a**i for i in range(k + 1))
        assert float(expected_tokens_per_step(a, k)) == pytest.approx(expect, rel=1e-12)
    assert float(expected_tokens_per_step(1.0, 4.0)) == pytest.approx(5.0)
    assert float(expected_tokens_per_step(0.7, 0.0)) == pytest.approx(1.0)
    assert_grad_matches_fd(lambda a: expected_tokens_per_step(a, 4.0), 0.8)
    assert np.isfinite(float(jax.grad(expected_tokens_per_step)(1.0, 4.0)))
    # Monte Carlo (iid acceptance, stop at the first rejection, +1 bonus/corrected token)
    rng = np.random.default_rng(1)
    acc = rng.random((100_000, 4)) < 0.8
    n = np.where(acc.all(1), 4, acc.argmin(1)) + 1
    assert n.mean() == pytest.approx(float(expected_tokens_per_step(0.8, 4.0)), rel=5e-3)


# --------------------------------------------------------------------------- roofline


def test_kv_and_max_batch_by_hand(dep8b, eff):
    assert float(kv_bytes_per_sequence(dep8b, 2000.0)) == pytest.approx(65536 * 2000)
    expect = (80e9 * 0.9 - 8.03e9) / (65536 * 2000)
    assert float(max_batch(dep8b, eff, 2000.0)) == pytest.approx(expect)


def test_decode_step_regimes(dep8b, eff):
    # batch 1: memory-bound, ~ weights / achieved bandwidth + overhead
    s = decode_step(dep8b, eff, 1.0, 1000.0)
    assert float(s.memory_s) > 10 * float(s.compute_s)
    assert float(s.total_s) == pytest.approx(0.002 + (8.03e9 + 65536 * 1000) / (3.35e12 * 0.8), rel=1e-6)
    # large batch: compute share grows
    big = decode_step(dep8b, eff, 2000.0, 100.0)
    assert float(big.compute_s) > float(big.memory_s)


def test_kernels_jit_grad_vmap(dep8b, eff, wl):
    f = lambda b: max_throughput_point(dep8b._replace(mem_bw=b), eff, wl).output_tok_s  # noqa: E731
    assert float(jax.jit(f)(3.35e12)) == pytest.approx(float(f(3.35e12)), rel=1e-12)
    bws = jnp.asarray([2.0e12, 3.35e12, 4.8e12])
    v = jax.vmap(f)(bws)
    loop = jnp.stack([f(b) for b in bws])
    np.testing.assert_allclose(np.asarray(v), np.asarray(loop), rtol=1e-12)
    assert_grad_matches_fd(lambda b: f(b * 1e12) / 1000.0, 3.35, rtol=1e-4)
    assert_grad_matches_fd(
        lambda fl: max_throughput_point(dep8b, eff._replace(prefill_flops_eff=fl), wl).output_tok_s, 0.7)
    short = Workload(jnp.asarray(100.0), jnp.asarray(100.0), jnp.asarray(0.0))  # compute-bound decode
    assert_grad_matches_fd(
        lambda fl: operating_point(dep8b, eff._replace(flops_eff=fl), short, 3000.0).output_tok_s, 0.6)
    # the usable HBM share u only moves the KV room B_max, so d thr/du = d thr/dB at B_max * dB_max/du with
    # dB_max/du = dp * HBM * s_kv / KV_seq(isl + osl) = 80e9 / (65536 * 2000) (dp = s_kv = 1)
    thr_u = lambda m: max_throughput_point(dep8b, eff._replace(mem_util=m), wl).output_tok_s  # noqa: E731
    assert_grad_matches_fd(thr_u, 0.9)
    b_max = float(max_batch(dep8b, eff, 2000.0))
    assert b_max == pytest.approx((80e9 * 0.9 - 8.03e9) / (65536 * 2000), rel=1e-12)
    # d thr/dB at B_max, on a deployment whose cap (u = 1) lies above B_max: no clip in the way
    dthr_db = float(jax.grad(lambda b: operating_point(dep8b, eff._replace(mem_util=1.0), wl, b).output_tok_s)(b_max))
    assert dthr_db > 0
    assert float(jax.grad(thr_u)(0.9)) == pytest.approx(dthr_db * 80e9 / (65536 * 2000), rel=1e-9)
    # below the cap (64 < B_max ~ 488) the operating point does not depend on u at all
    assert float(jax.grad(lambda m: operating_point(dep8b, eff._replace(mem_util=m), wl, 64.0).output_tok_s)(0.9)) == 0
    assert_grad_matches_fd(
        lambda isl: max_throughput_point(dep8b, eff, wl._replace(isl=isl)).output_tok_s, 1000.0)
    assert_grad_matches_fd(
        lambda b: operating_point(dep8b, eff, wl, b).output_tok_s, 64.0)
    assert_grad_matches_fd(lambda isl: prefill_time(dep8b, eff, isl, 0.3), 2000.0)
    assert_grad_matches_fd(lambda h: prefill_time(dep8b, eff, 2000.0, h), 0.3)


def test_moe_decode_grad(dep_moe, eff, wl):
    assert_grad_matches_fd(lambda b: decode_step(dep_moe, eff, b, 1500.0).total_s * 1e3, 24.0)
    assert_grad_matches_fd(lambda b: operating_point(dep_moe, eff, wl, b).output_tok_s, 24.0)


# --------------------------------------------------------------------------- invariants


@pytest.mark.parametrize("batch", [1.0, 16.0, 256.0, None])
def test_more_bandwidth_or_compute_never_lowers_throughput(dep8b, eff, wl, batch):
    def thr(d):
        return float((operating_point(d, eff, wl, batch) if batch else max_throughput_point(d, eff, wl)).output_tok_s)
    base = thr(dep8b)
    for scale in (1.1, 1.5, 3.0):
        assert thr(dep8b._replace(mem_bw=dep8b.mem_bw * scale)) >= base * (1 - 1e-12)
        assert thr(dep8b._replace(peak_flops=dep8b.peak_flops * scale)) >= base * (1 - 1e-12)
        assert thr(dep8b._replace(link_bw=dep8b.link_bw * scale)) >= base * (1 - 1e-12)


def test_fp8_never_loses_to_bf16_when_memory_bound(dep8b, eff, wl):
    bf16 = dep8b._replace(weight_bytes=dep8b.weight_bytes * 2, dense_weight_bytes=dep8b.dense_weight_bytes * 2,
                          kv_full_bytes_per_token=dep8b.kv_full_bytes_per_token * 2,
                          peak_flops=jnp.asarray(989e12))
    for b in (1.0, 8.0, 32.0):
        p8 = operating_point(dep8b, eff, wl, b)
        p16 = operating_point(bf16, eff, wl, b)
        assert float(p8.memory_bound_share) > 0.5
        assert float(p8.output_tok_s) >= float(p16.output_tok_s)
    assert float(max_throughput_point(dep8b, eff, wl).output_tok_s) >= float(
        max_throughput_point(bf16, eff, wl).output_tok_s)


def test_throughput_never_exceeds_roofline(dep8b, dep_moe, wl):
    ideal = Efficiency(*(jnp.asarray(x) for x in (1.0, 1.0, 1.0, 1.0, 0.0, 0.9, 0.0, 0.0, 0.0, 1.0)))
    for dep in (dep8b, dep_moe):
        for isl, osl in [(128.0, 128.0), (1000.0, 1000.0), (20000.0, 2000.0)]:
            w = Workload(jnp.asarray(isl), jnp.asarray(osl), jnp.asarray(0.0))
            p = max_throughput_point(dep, ideal, w)
            # compute roof on all tokens processed (prefill + decode), per GPU
            compute_roof = float(dep.peak_flops) / (2 * float(dep.active_params)) * osl / (isl + osl)
            assert float(p.output_tok_s) <= compute_roof
            # bandwidth roof: each step must at least read the dense weights and the batch's KV
            bw_roof = float(p.batch) * float(dep.mem_bw) / float(
                dep.dense_weight_bytes + p.batch * kv_bytes_per_sequence(dep, isl + osl / 2))
            assert float(p.output_tok_s) <= bw_roof


def test_not_fitting_is_reported_not_negative(dep8b, eff, wl):
    tiny = dep8b._replace(hbm_bytes=jnp.asarray(4e9))
    p = max_throughput_point(tiny, eff, wl)
    assert not bool(p.fits)
    assert float(p.output_tok_s) == 0.0
    g = jax.grad(lambda h: max_throughput_point(dep8b._replace(hbm_bytes=h), eff, wl).output_tok_s)(4e9)
    assert np.isfinite(float(g))


# --------------------------------------------------------------------------- SLO batch


def test_slo_batch_meets_target_and_is_largest(dep8b, eff, wl):
    tpot = 0.020
    b, ok = slo_batch(dep8b, eff, wl, tpot, jnp.inf)
    assert bool(ok)
    p = operating_point(dep8b, eff, wl, b)
    assert float(p.tpot_s) == pytest.approx(tpot, rel=1e-6)
    assert float(operating_point(dep8b, eff, wl, b * 1.01).tpot_s) > tpot
    # implicit gradient of the SLO batch w.r.t. bandwidth against finite differences
    f = lambda bw: slo_batch(dep8b._replace(mem_bw=bw * 1e12), eff, wl, tpot, jnp.inf)[0]  # noqa: E731
    assert_grad_matches_fd(f, 3.35, rtol=1e-3)
    # a loose SLO returns the memory cap; an impossible one is infeasible
    b_cap, ok_cap = slo_batch(dep8b, eff, wl, 10.0, jnp.inf)
    assert float(b_cap) == pytest.approx(float(max_batch(dep8b, eff, 2000.0)))
    _, ok_bad = slo_batch(dep8b, eff, wl, 1e-4, jnp.inf)
    assert not bool(ok_bad)
    # TTFT target binds too
    b_t, ok_t = slo_batch(dep8b, eff, wl, jnp.inf, 0.05)
    assert bool(ok_t) and float(operating_point(dep8b, eff, wl, b_t).ttft_s) <= 0.05 * (1 + 1e-6)


def test_slo_point_is_the_operating_point_at_the_slo_batch(dep8b, dep_moe, eff, wl):
    """``slo_point`` (the bracket's ends and the root in one evaluation) returns exactly the
    operating point at ``slo_batch``'s batch — at a root, at the memory cap, where infeasible and
    under a TTFT target — under jit and vmap over stacked layouts and speculation settings, and its
    gradient matches finite differences."""
    tpot = jnp.asarray([0.020, 10.0, 1e-4, jnp.inf])  # root, memory cap, infeasible, TTFT binds
    ttft = jnp.asarray([jnp.inf, jnp.inf, jnp.inf, 0.05])
    specs = Speculation(jnp.asarray([0.0, 3.0]), jnp.asarray([1.0, 2.4]), jnp.asarray([0.0, 0.1]))
    deps = jax.tree.map(lambda a, b: jnp.stack([jnp.asarray(a, float), jnp.asarray(b, float)]), dep8b, dep_moe)

    def grid(f):  # (speculation 2, layout 2, SLO 4)
        return jax.jit(jax.vmap(jax.vmap(jax.vmap(f, (None, None, 0, 0)), (None, 0, None, None)),
                                (0, None, None, None)))(specs, deps, tpot, ttft)

    def old(sp, dep, tp, tt):
        b, ok = slo_batch(dep, eff, wl, tp, tt, sp)
        return operating_point(dep, eff, wl, b, sp), ok

    got, ok = grid(lambda sp, dep, tp, tt: slo_point(dep, eff, wl, tp, tt, sp))
    want, ok_want = grid(old)
    np.testing.assert_array_equal(np.asarray(ok), np.asarray(ok_want))
    assert np.asarray(ok)[..., [0, 1, 3]].all() and not np.asarray(ok)[..., 2].any()
    np.testing.assert_allclose(np.asarray(got.batch)[..., 1], np.asarray(got.max_batch)[..., 1], rtol=1e-13)
    for name, a, b in zip(got._fields, got, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-13, atol=0, err_msg=name)
    spec = jax.tree.map(lambda x: x[1], specs)
    f = jax.jit(lambda bw: slo_point(dep8b._replace(mem_bw=bw * 1e12), eff, wl, 0.020, jnp.inf, spec)[0].gpu_s_per_request)
    assert_grad_matches_fd(f, 3.35, rtol=1e-3)


def test_slo_batch_precision_follows_bisection_steps(dep8b, eff, wl):
    """``steps`` bisections stay on the feasible side, within log(B_max)·2^-steps of the root, and keep
    the implicit gradient."""
    tpot = 0.020
    b48, _ = slo_batch(dep8b, eff, wl, tpot, jnp.inf)
    b24, _ = slo_batch(dep8b, eff, wl, tpot, jnp.inf, steps=24)
    b_max = float(max_batch(dep8b, eff, 2000.0))
    assert float(b24) <= float(b48)
    assert math.log(float(b48)) - math.log(float(b24)) <= math.log(b_max) * 2.0**-24 * (1 + 1e-9)
    assert float(operating_point(dep8b, eff, wl, b24).tpot_s) <= tpot
    g48 = jax.grad(lambda bw: slo_batch(dep8b._replace(mem_bw=bw * 1e12), eff, wl, tpot, jnp.inf)[0])(3.35)
    g24 = jax.grad(lambda bw: slo_batch(dep8b._replace(mem_bw=bw * 1e12), eff, wl, tpot, jnp.inf, steps=24)[0])(3.35)
    assert float(g24) == pytest.approx(float(g48), rel=1e-5)


def test_speculation_helps_at_small_batch_hurts_at_large(dep8b, eff, wl):
    spec = Speculation(jnp.asarray(4.0), expected_tokens_per_step(0.8, 4.0), jnp.asarray(0.05))
    eff = eff._replace(step_overhead_s=jnp.asarray(2e-4))  # every draft step pays the fixed per-step overhead
    small_plain = operating_point(dep8b, eff, wl, 1.0)
    small_spec = operating_point(dep8b, eff, wl, 1.0, spec)
    assert float(small_spec.tpot_s) < float(small_plain.tpot_s) / 2
    # short contexts and a big batch make plain decode compute-bound: verifying k+1 tokens per
    # sequence then costs more than it saves (ECONOMICS.md §3.3 caveat 2)
    short = Workload(jnp.asarray(100.0), jnp.asarray(100.0), jnp.asarray(0.0))
    big = jnp.asarray(4000.0)
    plain = operating_point(dep8b, eff, short, big)
    assert float(plain.memory_bound_share) < 0.5
    assert float(operating_point(dep8b, eff, short, big, spec).output_tok_s) < float(plain.output_tok_s)


def test_cost_formulas():
    # $2/GPU-h, 1 GPU-s for 1000 tokens -> 2/3600 * 1e3 $/Mtok
    assert float(usd_per_mtok(2.0, 1.0, 1000.0)) == pytest.approx(2.0 / 3600 * 1000)
    tco = float(tco_gpu_hour(30000.0, 4.0, 700.0, 1.3, 0.08))
    assert tco == pytest.approx(30000 / (4 * 8760) + 0.7 * 1.3 * 0.08)
    assert_grad_matches_fd(lambda c: tco_gpu_hour(c, 4.0, 700.0, 1.3, 0.08), 30000.0)
