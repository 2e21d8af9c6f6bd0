"""Deployments: expert / data parallelism, multi-node, disaggregation and MTP — kernels and choices.

Kernels under jit, grad and vmap with finite differences, and the physical invariants of issue 9:
EP never increases per-GPU expert bytes, more scale-out bandwidth never lowers throughput,
speculation at acceptance 0 never helps, a disaggregated pool's TTFT includes the KV transfer, and
a deployment that does not fit says so (never a negative or NaN throughput).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels.roofline import (alltoall_time, decode_step, expert_bytes_per_gpu, kv_transfer_time, max_batch,
                              weight_bytes_per_gpu)
from kernels.serving import NO_SPECULATION, Speculation, Workload, max_throughput_point, operating_point, slo_batch
from optimizer import catalog
from optimizer.deployments import candidate_layouts, fits_one_sequence
from optimizer.errors import ConfigError
from optimizer.params import Layout, build_deployment, build_mtp, efficiency_for, expert_slots, validate_layout
from tests.helpers import assert_grad_matches_fd

EFF = efficiency_for(catalog.load_efficiency("calibrated"), "hopper")
WL = Workload(jnp.asarray(1024.0), jnp.asarray(2048.0), jnp.asarray(0.0))
DSV3 = catalog.load_model("deepseek-v3")
H200 = catalog.load_hardware("h200-sxm")
FP8 = catalog.load_precision("fp8")


def dep(layout: Layout, hw=H200, model=DSV3, prec=FP8):
    return build_deployment(hw, model, prec, layout)


def test_layout_builds_per_gpu_memory_by_the_tp_dp_ep_rule():
    tep = dep(Layout(8, 8, 8))
    dep8 = dep(Layout(8, 1, 8))
    # attention / dense weights over tp, experts over all GPUs: DP replicates attention
    w_tep = float(tep.dense_weight_bytes / 8 + tep.expert_weight_bytes / 8)
    w_dep = float(dep8.dense_weight_bytes + dep8.expert_weight_bytes / 8)
    assert w_dep > w_tep
    # MLA's latent is replicated over TP ranks, so DP holds ~8x the sequences per GPU of free memory
    free_tep = 141e9 * float(EFF.mem_util) - w_tep
    free_dep = 141e9 * float(EFF.mem_util) - w_dep
    ratio = float(max_batch(dep8, EFF, 3072.0) / max_batch(tep, EFF, 3072.0))
    assert ratio == pytest.approx(8 * free_dep / free_tep, rel=1e-9)


@pytest.mark.parametrize("lam", [1.0, 1.5, 2.0])
def test_ep_never_increases_per_gpu_expert_bytes(lam):
    eff = EFF._replace(ep_imbalance=jnp.asarray(lam))
    for tokens in (1.0, 8.0, 64.0, 512.0, 4096.0):
        per_gpu = [float(expert_bytes_per_gpu(dep(Layout(g, 1, g)), eff, tokens)) for g in (2, 4, 8, 16, 32, 64)]
        assert all(b <= a * (1 + 1e-12) for a, b in zip(per_gpu, per_gpu[1:])), (tokens, per_gpu)
    # and never above the bytes of the GPU's whole expert shard
    d = dep(Layout(16, 1, 16))
    assert float(expert_bytes_per_gpu(d, eff, 1e6)) <= float(d.expert_weight_bytes / 16) * (1 + 1e-12)


@pytest.mark.parametrize("layout", [Layout(16, 1, 16), Layout(32, 1, 32), Layout(16, 1, 16, True),
                                    Layout(8, 1, 8, True)])
def test_more_scaleout_bandwidth_never_lowers_throughput(layout):
    d = dep(layout)
    dis = float(layout.disaggregated)
    for batch in (1.0, 64.0, 1024.0, None):
        def thr(x):
            if batch is None:
                return float(max_throughput_point(x, EFF, WL, disaggregated=dis).output_tok_s)
            return float(operating_point(x, EFF, WL, batch, disaggregated=dis).output_tok_s)
        base = thr(d)
        for scale in (1.5, 4.0, 100.0):
            assert thr(d._replace(scaleout_bw=d.scaleout_bw * scale)) >= base * (1 - 1e-12)


def test_speculation_at_zero_acceptance_never_helps():
    d = dep(Layout(8, 8, 8))
    for k in (1.0, 3.0):
        spec = Speculation(jnp.asarray(k), jnp.asarray(1.0), jnp.asarray(1 / 61))
        for b in (1.0, 8.0, 128.0):
            plain = operating_point(d, EFF, WL, b)
            specd = operating_point(d, EFF, WL, b, spec)
            assert float(specd.tpot_s) >= float(plain.tpot_s)
            assert float(specd.output_tok_s) <= float(plain.output_tok_s)


def test_mtp_helps_at_small_batch_and_hurts_at_large():
    d = dep(Layout(8, 1, 8))
    mtp = build_mtp(DSV3, 3)
    assert float(mtp.tokens_per_round) == pytest.approx(2.82)  # measured_slo_throughput.csv, MTP-3
    small = operating_point(d, EFF, WL, 1.0)
    small_mtp = operating_point(d, EFF, WL, 1.0, mtp)
    assert float(small_mtp.tpot_s) < 0.6 * float(small.tpot_s)
    short = Workload(jnp.asarray(128.0), jnp.asarray(128.0), jnp.asarray(0.0))
    big = max_throughput_point(d, EFF, short)
    big_mtp = max_throughput_point(d, EFF, short, mtp)
    assert float(big.memory_bound_share) < 0.5  # compute-bound: verifying 4 tokens costs more than it saves
    assert float(big_mtp.output_tok_s) < float(big.output_tok_s)


def test_disaggregated_ttft_includes_the_kv_transfer_and_tpot_no_prefill():
    d = dep(Layout(8, 1, 8))
    agg = operating_point(d, EFF, WL, 256.0, disaggregated=0.0)
    dis = operating_point(d, EFF, WL, 256.0, disaggregated=1.0)
    transfer = float(kv_transfer_time(d, WL.isl))
    assert transfer > 0 and float(dis.kv_transfer_s) == pytest.approx(transfer)
    # 1024 tokens x 35,136 B (MLA latent at FP8) over one 50 GB/s NIC
    assert transfer == pytest.approx(1024 * 70272 / 2 / 50e9, rel=1e-9)
    assert float(dis.ttft_s) == pytest.approx(float(agg.ttft_s) + transfer, rel=1e-12)
    # aggregated sequences wait for the prefills interleaved with their decode; disaggregated ones do not
    assert float(agg.tpot_s) == pytest.approx(float(dis.tpot_s) + 256 * float(agg.prefill_s) / 2048, rel=1e-12)
    # same GPU-seconds per request: each pool is sized by its own load
    assert float(dis.gpu_s_per_request) == pytest.approx(float(agg.gpu_s_per_request), rel=1e-12)


def test_a_deployment_that_does_not_fit_reports_so():
    small = dep(Layout(2, 1, 2))  # 671 GB of FP8 weights on two H200s
    for p in (max_throughput_point(small, EFF, WL), operating_point(small, EFF, WL, 64.0, disaggregated=1.0)):
        assert not bool(p.fits)
        assert float(p.output_tok_s) == 0.0 and np.isfinite(float(p.tpot_s))
    b, ok = slo_batch(small, EFF, WL, 0.05, jnp.inf)
    assert not bool(ok) and float(b) == 1.0
    g = jax.grad(lambda bw: max_throughput_point(small._replace(scaleout_bw=bw), EFF, WL).output_tok_s)(50e9)
    assert np.isfinite(float(g))


def test_new_kernels_under_jit_grad_vmap():
    d16 = dep(Layout(16, 1, 16))
    f = lambda so: operating_point(d16._replace(scaleout_bw=so * 1e9), EFF, WL, 512.0).output_tok_s  # noqa: E731
    assert float(jax.jit(f)(50.0)) == pytest.approx(float(f(50.0)), rel=1e-12)
    v = jax.vmap(f)(jnp.asarray([25.0, 50.0, 100.0]))
    np.testing.assert_allclose(np.asarray(v), [float(f(x)) for x in (25.0, 50.0, 100.0)], rtol=1e-12)
    assert_grad_matches_fd(f, 50.0)
    assert_grad_matches_fd(lambda t: alltoall_time(d16, EFF, t) * 1e3, 300.0)
    assert_grad_matches_fd(lambda b: decode_step(d16, EFF, b, 2000.0).total_s * 1e3, 700.0)
    assert_grad_matches_fd(lambda lam: decode_step(d16, EFF._replace(ep_imbalance=lam), 512.0, 2000.0).total_s * 1e3,
                           1.5)
    assert_grad_matches_fd(lambda a: decode_step(dep(Layout(8, 8, 8)), EFF._replace(collective_latency_s=a * 1e-6),
                                                 1.0, 2000.0).total_s * 1e3, 20.0)
    mtp = build_mtp(DSV3, 3)
    assert_grad_matches_fd(lambda t: operating_point(d16, EFF, WL, 8.0, mtp._replace(tokens_per_round=t)).output_tok_s,
                           2.5)
    assert_grad_matches_fd(lambda isl: operating_point(d16, EFF, WL._replace(isl=isl), 64.0,
                                                       disaggregated=1.0).ttft_s * 1e3, 1024.0)
    # the SLO batch's implicit gradient with a disaggregated, multi-node deployment
    g = lambda so: slo_batch(d16._replace(scaleout_bw=so * 1e9), EFF, WL, 0.05, jnp.inf,  # noqa: E731
                             disaggregated=1.0)[0]
    assert_grad_matches_fd(g, 50.0, rtol=1e-3)
    # vmap over a stack of layouts (a candidate axis)
    from optimizer.params import stack_trees
    stack = stack_trees([dep(x) for x in (Layout(8, 8, 8), Layout(8, 1, 8), Layout(16, 1, 16))])
    out = jax.vmap(lambda x: operating_point(x, EFF, WL, 64.0, NO_SPECULATION).output_tok_s)(stack)
    loop = [float(operating_point(dep(x), EFF, WL, 64.0).output_tok_s) for x in (Layout(8, 8, 8), Layout(8, 1, 8),
                                                                                Layout(16, 1, 16))]
    np.testing.assert_allclose(np.asarray(out), loop, rtol=1e-12)


def test_tp_over_pcie_and_multi_node_layouts():
    l40s = catalog.load_hardware("l40s")
    llama70 = catalog.load_model("llama-3p3-70b")
    d = build_deployment(l40s, llama70, FP8, 4)  # TP4 over PCIe: accepted now
    assert float(d.link_bw) == pytest.approx(l40s.pcie_bw_gb_s * 1e9) and float(d.domain_gpus) == 8
    p = max_throughput_point(d, efficiency_for(catalog.load_efficiency(), "ada"), WL)
    assert bool(p.fits) and float(p.output_tok_s) > 0
    lays = candidate_layouts(l40s, llama70, FP8, 0.9, 3072.0)
    assert {x.tp for x in lays} >= {2, 4, 8}
    # DeepSeek-V3 FP8 on H800 (80 GB) needs more than one 8-GPU node
    h800 = catalog.load_hardware("h800")
    lays = candidate_layouts(h800, DSV3, FP8, 0.9, 3072.0)
    assert lays and min(x.gpus for x in lays) == 16 and all(x.nodes(h800) >= 2 for x in lays)
    with pytest.raises(ConfigError, match="ep=3 must divide"):
        validate_layout(H200, DSV3, Layout(8, 1, 3))
    with pytest.raises(ConfigError, match="dense"):
        validate_layout(H200, llama70, Layout(8, 1, 8))
    with pytest.raises(ConfigError, match="MTP"):
        validate_layout(H200, llama70, Layout(2, 2, 1, spec_k=1))


def test_an_ep_degree_that_does_not_divide_the_experts_holds_redundant_slots():
    """DeepSeek-V3's production decode runs EP144 over 18 H800 nodes: 256 experts in 2 slots per GPU
    (288 slots, 32 of them redundant copies). Each GPU holds ceil(E / ep) experts' weights."""
    h800 = catalog.load_hardware("h800")
    assert expert_slots(256, 144) == pytest.approx(288 / 256) and expert_slots(256, 32) == 1.0
    assert expert_slots(0, 8) == 1.0 and expert_slots(256, 1) == 1.0
    validate_layout(h800, DSV3, Layout(144, 1, 144))  # accepted now
    with pytest.raises(ConfigError, match=r"ep=7 must divide the replica's gpus=144; accepted ep values: \[1, 2, 3"):
        validate_layout(h800, DSV3, Layout(144, 1, 7))
    d144 = build_deployment(h800, DSV3, FP8, Layout(144, 1, 144), dtype=None)
    d128 = build_deployment(h800, DSV3, FP8, Layout(128, 1, 128), dtype=None)
    per_expert = DSV3.routed_expert_params_b * 1e9 * FP8.bytes_per_weight / 256
    assert weight_bytes_per_gpu(d144) - float(d144.dense_weight_bytes) == pytest.approx(2 * per_expert)
    assert weight_bytes_per_gpu(d128) - float(d128.dense_weight_bytes) == pytest.approx(2 * per_expert)
    assert float(d144.expert_weight_bytes) == pytest.approx(288 * per_expert)
    assert fits_one_sequence(h800, DSV3, FP8, Layout(144, 1, 144), 0.9, 6000.0)
    p = max_throughput_point(d144, EFF, WL)
    assert bool(p.fits) and float(p.output_tok_s) > 0
