"""Roofline model of one LLM deployment: memory fit, prefill time and decode step time.

A *deployment* is (model, precision, GPU type, parallel layout). A **replica** is the set of
``gpus`` GPUs that holds one copy of the model and serves its own sequences. Its layout:

* ``tp``: tensor-parallel degree of attention and dense layers (GPUs sharing one attention instance);
* ``dp = gpus / tp``: attention data-parallel ranks, each with its own sequences, KV cache and a
  full copy of the attention / dense weights (``tp = gpus`` is plain tensor parallelism);
* ``ep``: expert-parallel degree: routed experts are sharded over all ``gpus`` (``ep`` ways by expert,
  ``gpus / ep`` ways inside each expert), so each GPU holds ``1/gpus`` of the expert weights;
* replicas larger than the scale-up domain (NVLink 8, NVL72, or the PCIe node) span nodes: their
  collectives leave the domain over the scale-out NICs.

Per GPU, a decode step of ``B`` sequences (``n = B·q`` tokens, ``q`` = 1 or k + 1 when verifying
drafts) is the sum of its non-overlapping parts (each part its own roofline) [ECONOMICS.md §3.1;
Pope et al. 2023; Austin et al., *How to Scale Your Model*]::

    T_dense  = smax(W_dense/tp / BW,              λ_dp·n/dp · 2·N_dense / tp / F)
    T_attn   = smax(λ_dp·(B/dp)·KV_seq/s_kv / BW, λ_dp·n/dp · A·ctx / tp / F_attn)
    T_expert = smax(W_exp/gpus · f(λn) / (BW·η_moe),  λn · 2·N_exp / gpus / (F·η_moe))
    T_comm   = TP all-reduces (2 per layer over tp) + EP dispatch/combine all-to-all (2 per MoE
               layer, when dp > 1), bandwidth + per-collective latency α
    T_step   = t_0 + L·t_layer + L_moe·t_moe + T_dense + T_attn + T_expert + T_comm

``BW = bw·η_bw`` and ``F = flops·η_fl`` are achieved per-GPU rates (attention math ``F_attn`` at the
BF16 roof: attention kernels dequantise FP8 KV and compute in 16-bit); ``s_kv`` the KV shards
(``min(tp, KV heads)``; 1 for MLA, whose latent is replicated on every TP rank);
``f`` the expected share of local experts touched (:mod:`kernels.moe`); ``λ ≥ 1`` the load
imbalance over parallel ranks (the busiest expert rank receives, and the busiest attention DP rank
holds, ``1 + (λ − 1)(1 − 1/ranks)`` times the mean; 1 without EP / DP);
``η_moe ≤ 1`` the achieved share of the dense GEMM rate that grouped expert GEMMs reach (it lowers the
rate, never multiplies the bytes). Prefill is compute-bound and batched across requests::

    GPU-s_prefill = (2 · N_active · n_new + A · (isl² − cached²)/2) / (F_pf) + comm
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from kernels.moe import distinct_expert_fraction
from kernels.smooth import smooth_max_pos, soft_clip_below


class Deployment(NamedTuple):
    """Arrays describing one deployment (all scalars or broadcastable batches)."""

    # model at the serving precision
    weight_bytes: jnp.ndarray  # total weights incl. all experts, bytes (one copy of the model)
    dense_weight_bytes: jnp.ndarray  # weights read every decode step regardless of routing, bytes
    expert_weight_bytes: jnp.ndarray  # routed-expert weights (all experts), bytes; 0 for dense
    num_experts: jnp.ndarray  # routed experts per MoE layer (1 for dense)
    experts_per_token: jnp.ndarray  # top-k (1 for dense)
    active_params: jnp.ndarray  # parameters used per token (FLOPs = 2·this), count
    expert_active_params: jnp.ndarray  # of which in routed experts (routed params · k/E), count
    kv_full_bytes_per_token: jnp.ndarray  # KV bytes per context token, full-attention layers
    kv_window_bytes_per_token: jnp.ndarray  # KV bytes per context token, windowed layers (capped)
    window_tokens: jnp.ndarray  # window / chunk length of the windowed layers, tokens
    attn_full_flops: jnp.ndarray  # attention FLOPs per (query × context token), full layers
    attn_window_flops: jnp.ndarray  # same for windowed layers (context capped at the window)
    attn_prefill_flops: jnp.ndarray  # full-layer attention FLOPs per (query × context) in prefill
    layers: jnp.ndarray  # transformer layers (two TP all-reduces each)
    moe_layers: jnp.ndarray  # layers with routed experts (one dispatch + one combine each under EP)
    hidden_size: jnp.ndarray  # model width, elements
    kv_heads: jnp.ndarray  # KV heads a TP group can split the cache over (1 for MLA's shared latent)
    # GPU
    hbm_bytes: jnp.ndarray  # memory per GPU, bytes
    mem_bw: jnp.ndarray  # memory bandwidth per GPU, bytes/s
    peak_flops: jnp.ndarray  # dense tensor peak per GPU at the precision's math roof, FLOP/s
    attn_peak_flops: jnp.ndarray  # peak of the attention kernels' math (BF16), FLOP/s
    link_bw: jnp.ndarray  # scale-up (NVLink / xGMI, or PCIe) bandwidth per GPU per direction, bytes/s
    scaleout_bw: jnp.ndarray  # scale-out NIC bandwidth per GPU per direction, bytes/s
    domain_gpus: jnp.ndarray  # GPUs in one scale-up domain (the node for PCIe GPUs)
    # layout
    gpus: jnp.ndarray  # GPUs per replica
    tp: jnp.ndarray  # attention / dense tensor-parallel degree (divides gpus)
    ep: jnp.ndarray  # expert-parallel degree (1 for dense models)


class Efficiency(NamedTuple):
    """Calibrated efficiency factors (see ``tokenmargin-calibrate``)."""

    bw_eff: jnp.ndarray  # achieved / peak memory bandwidth, in (0, 1]
    flops_eff: jnp.ndarray  # achieved / peak tensor FLOPS in decode steps, in (0, 1]
    prefill_flops_eff: jnp.ndarray  # achieved / peak tensor FLOPS in prefill, in (0, 1]
    moe_eff: jnp.ndarray  # achieved rate of grouped expert GEMMs relative to dense GEMMs, in (0, 1]
    step_overhead_s: jnp.ndarray  # fixed time per decode step (scheduling, sampling), s
    mem_util: jnp.ndarray  # usable share of HBM for weights + KV, in (0, 1]
    layer_overhead_s: jnp.ndarray = 0.0  # fixed time per layer per step (kernel launches, syncs), s
    moe_layer_overhead_s: jnp.ndarray = 0.0  # extra fixed time per MoE layer per step (routing kernels), s
    collective_latency_s: jnp.ndarray = 0.0  # latency of one collective (all-reduce, dispatch or combine), s
    ep_imbalance: jnp.ndarray = 1.0  # busiest / mean tokens per expert-parallel rank at large EP, ≥ 1


ACTIVATION_BYTES = 2.0
"""Bytes per activation element in collectives (16-bit activations)."""

WINDOW_SOFTNESS_TOKENS = 16.0
"""Transition width of the smooth ``min(ctx, window)``, tokens (numerical choice)."""


def dp_ranks(dep: Deployment) -> jnp.ndarray:
    """Attention data-parallel ranks per replica, ``gpus / tp``."""
    return dep.gpus / dep.tp


def kv_shards(dep: Deployment) -> jnp.ndarray:
    """Ways one sequence's KV cache is split inside its attention rank: ``min(tp, KV heads)``."""
    return jnp.clip(dep.kv_heads, 1.0, dep.tp)


def kv_bytes_per_sequence(dep: Deployment, context: jnp.ndarray) -> jnp.ndarray:
    """KV-cache bytes held by one sequence with ``context`` tokens (whole sequence, all ranks).

    ``KV_full · ctx + KV_window · min(ctx, window)``; MLA models put their latent size in
    ``kv_full_bytes_per_token``.
    """
    windowed = soft_clip_below(context, dep.window_tokens, WINDOW_SOFTNESS_TOKENS)
    windowed = jnp.maximum(windowed, 0.0)
    return dep.kv_full_bytes_per_token * context + dep.kv_window_bytes_per_token * windowed


def attention_flops_per_token(dep: Deployment, context: jnp.ndarray) -> jnp.ndarray:
    """Attention FLOPs for one query token attending to ``context`` tokens."""
    windowed = jnp.maximum(soft_clip_below(context, dep.window_tokens, WINDOW_SOFTNESS_TOKENS), 0.0)
    return dep.attn_full_flops * context + dep.attn_window_flops * windowed


def weight_bytes_per_gpu(dep: Deployment) -> jnp.ndarray:
    """Weights resident on one GPU: attention / dense over ``tp``, routed experts over ``gpus``."""
    return dep.dense_weight_bytes / dep.tp + dep.expert_weight_bytes / dep.gpus


def free_kv_bytes(dep: Deployment, eff: Efficiency) -> jnp.ndarray:
    """Bytes left for the KV cache per GPU: ``HBM · u − W_gpu`` (negative = does not fit)."""
    return dep.hbm_bytes * eff.mem_util - weight_bytes_per_gpu(dep)


def max_batch(dep: Deployment, eff: Efficiency, max_context: jnp.ndarray) -> jnp.ndarray:
    """Largest number of concurrent sequences per replica whose KV cache fits (continuous, may be ≤ 0).

    ``B_max = dp · free_gpu · s_kv / KV_seq(max_context)``: each attention rank stores its sequences'
    KV split ``s_kv`` ways over its ``tp`` GPUs.
    """
    per_rank = free_kv_bytes(dep, eff) * kv_shards(dep) / jnp.maximum(kv_bytes_per_sequence(dep, max_context), 1.0)
    return dp_ranks(dep) * per_rank


def _tp_link_bw(dep: Deployment) -> jnp.ndarray:
    """Bandwidth of the TP group's ring: scale-up when the group fits the domain, else scale-out."""
    return jnp.where(dep.tp <= dep.domain_gpus, dep.link_bw, dep.scaleout_bw)


def allreduce_time(dep: Deployment, eff: Efficiency, tokens: jnp.ndarray) -> jnp.ndarray:
    """Tensor-parallel all-reduces for ``tokens`` tokens of one attention rank through every layer, s.

    Two ring all-reduces per layer of ``tokens · hidden · 2`` bytes, each costing
    ``2 (tp − 1)/tp · bytes / link_bw + α``. Zero when ``tp == 1``.
    """
    per_layer_bytes = 2.0 * tokens * dep.hidden_size * ACTIVATION_BYTES
    ring = 2.0 * (dep.tp - 1.0) / dep.tp
    bandwidth_s = dep.layers * ring * per_layer_bytes / jnp.maximum(_tp_link_bw(dep), 1.0)
    latency_s = jnp.where(dep.tp > 1.0, 2.0 * dep.layers * eff.collective_latency_s, 0.0)
    return bandwidth_s + latency_s


def imbalance(dep: Deployment, eff: Efficiency, ranks: jnp.ndarray | None = None) -> jnp.ndarray:
    """Load of the busiest of ``ranks`` parallel ranks over the mean: ``1 + (λ − 1)(1 − 1/ranks)``.

    ``ranks`` defaults to the expert-parallel degree; 1 rank (no EP / no attention DP) gives 1. The
    same ``λ`` describes uneven tokens per expert rank and uneven sequences / context per attention
    DP rank (TensorRT-LLM's ADP-balance blog; DeepSeek's EPLB).
    """
    r = dep.ep if ranks is None else ranks
    return 1.0 + (eff.ep_imbalance - 1.0) * (1.0 - 1.0 / jnp.maximum(r, 1.0))


def alltoall_time(dep: Deployment, eff: Efficiency, tokens: jnp.ndarray) -> jnp.ndarray:
    """Expert dispatch + combine for ``tokens`` tokens of a replica through every MoE layer, s.

    Only when attention is data-parallel (``dp > 1``): each GPU sends its ``tokens / gpus`` tokens to
    the GPUs holding their experts — ``d = ep·(1 − (1 − 1/ep)^k)`` distinct ranks per token, of
    which ``1 − 1/ep`` are remote — and receives the results, ``2 · hidden · 2`` bytes per pair.
    Traffic to ranks outside the scale-up domain (share ``(gpus − domain)/(gpus − 1)``) goes over the
    NICs. The busiest rank carries ``λ`` times the mean. With ``dp == 1`` the TP all-reduces already
    combine the experts' outputs.
    """
    ep = jnp.maximum(dep.ep, 1.0)
    k = jnp.minimum(dep.experts_per_token, ep)
    dests = ep * (1.0 - (1.0 - 1.0 / ep) ** k) * (1.0 - 1.0 / ep)
    per_layer_bytes = tokens / dep.gpus * dests * dep.hidden_size * 2.0 * ACTIVATION_BYTES * imbalance(dep, eff)
    off_domain = jnp.clip((dep.gpus - dep.domain_gpus) / jnp.maximum(dep.gpus - 1.0, 1.0), 0.0, 1.0)
    per_layer_s = (per_layer_bytes * (1.0 - off_domain) / jnp.maximum(dep.link_bw, 1.0)
                   + per_layer_bytes * off_domain / jnp.maximum(dep.scaleout_bw, 1.0)
                   + 2.0 * eff.collective_latency_s)
    on = (dp_ranks(dep) > 1.0) & (dep.expert_weight_bytes > 0.0)
    return jnp.where(on, dep.moe_layers * per_layer_s, 0.0)


def expert_bytes_per_gpu(dep: Deployment, eff: Efficiency, tokens: jnp.ndarray) -> jnp.ndarray:
    """Routed-expert weight bytes the busiest GPU reads in a step routing ``tokens`` tokens.

    ``W_exp / gpus · f(λ_ep · tokens)``: each GPU holds ``1/gpus`` of the experts and reads the
    share of them its (imbalance-weighted) tokens touch (:func:`kernels.moe.distinct_expert_fraction`).
    """
    touched = distinct_expert_fraction(tokens * imbalance(dep, eff), dep.num_experts, dep.experts_per_token)
    return dep.expert_weight_bytes / dep.gpus * touched


class StepBreakdown(NamedTuple):
    """Decode step time and its parts, s."""

    total_s: jnp.ndarray
    memory_s: jnp.ndarray  # weight + KV bytes / achieved bandwidth (all parts)
    compute_s: jnp.ndarray  # FLOPs / achieved compute (all parts)
    comm_s: jnp.ndarray  # TP all-reduces + EP all-to-all
    overhead_s: jnp.ndarray  # t_0 + L · t_layer + L_moe · t_moe


def decode_step(dep: Deployment, eff: Efficiency, batch: jnp.ndarray, context: jnp.ndarray,
                tokens_per_seq: jnp.ndarray = 1.0) -> StepBreakdown:
    """Time of one decode step of ``batch`` sequences per replica at mean ``context`` tokens.

    Args:
      dep, eff: the deployment and its efficiency factors.
      batch: concurrent sequences in the replica (all its attention ranks), ≥ 0.
      context: mean tokens of context per sequence during decode.
      tokens_per_seq: tokens processed per sequence in this step (k + 1 when verifying drafts).

    Returns:
      :class:`StepBreakdown`, seconds (the slowest GPU's time; all GPUs step together).
    """
    bw = dep.mem_bw * eff.bw_eff
    fl = dep.peak_flops * eff.flops_eff
    dp = dp_ranks(dep)
    tokens = batch * tokens_per_seq
    lam_dp = imbalance(dep, eff, dp)
    rank_tokens = tokens / dp * lam_dp  # the busiest attention rank
    # attention / dense layers of one rank, split over its tp GPUs
    dense_mem = dep.dense_weight_bytes / dep.tp / bw
    dense_fl = rank_tokens * 2.0 * (dep.active_params - dep.expert_active_params) / dep.tp / fl
    attn_mem = (batch / dp) * lam_dp * kv_bytes_per_sequence(dep, context) / kv_shards(dep) / bw
    attn_fl = rank_tokens * attention_flops_per_token(dep, context) / dep.tp / (dep.attn_peak_flops * eff.flops_eff)
    # routed experts: the busiest GPU sees lam x the mean tokens
    routed = tokens * imbalance(dep, eff)
    exp_mem = expert_bytes_per_gpu(dep, eff, tokens) / (bw * eff.moe_eff)
    exp_fl = routed * 2.0 * dep.expert_active_params / dep.gpus / (fl * eff.moe_eff)
    has_exp = dep.expert_weight_bytes > 0.0
    body = (smooth_max_pos(dense_mem, dense_fl) + smooth_max_pos(attn_mem, attn_fl)
            + jnp.where(has_exp, smooth_max_pos(exp_mem, exp_fl), 0.0))
    comm = allreduce_time(dep, eff, rank_tokens) + alltoall_time(dep, eff, tokens)
    overhead = eff.step_overhead_s + dep.layers * eff.layer_overhead_s + dep.moe_layers * eff.moe_layer_overhead_s
    total = overhead + body + comm
    memory_s = dense_mem + attn_mem + jnp.where(has_exp, exp_mem, 0.0)
    compute_s = dense_fl + attn_fl + jnp.where(has_exp, exp_fl, 0.0)
    return StepBreakdown(total, memory_s, compute_s, comm, jnp.broadcast_to(overhead, jnp.shape(total)))


class PrefillCost(NamedTuple):
    """Prefill of one request."""

    gpu_s: jnp.ndarray  # GPU-seconds it costs (compute + communication), throughput view
    latency_s: jnp.ndarray  # wall time of the request's own prefill on its replica (for TTFT)


def prefill_cost(dep: Deployment, eff: Efficiency, isl: jnp.ndarray,
                 cached_share: jnp.ndarray = 0.0) -> PrefillCost:
    """Prefill of one request of ``isl`` tokens, a share of them prefix-cached.

    Compute-bound (prefill batches thousands of tokens, so weight reads are amortised). Cached
    tokens skip their linear-layer FLOPs and their own causal attention; new tokens still attend
    to the whole prompt. Attention and dense layers run on the request's attention rank (``tp``
    GPUs), routed experts on all ``gpus``.
    """
    cached = isl * cached_share
    new = isl - cached
    f_pf = dep.peak_flops * eff.prefill_flops_eff
    dense = 2.0 * (dep.active_params - dep.expert_active_params) * new
    expert = 2.0 * dep.expert_active_params * new / eff.moe_eff
    full_attn = dep.attn_prefill_flops * 0.5 * (isl**2 - cached**2)
    w = dep.window_tokens
    # Windowed layers: each new token attends to at most `w` tokens.
    win_ctx = jnp.maximum(soft_clip_below(0.5 * (isl + cached), w, WINDOW_SOFTNESS_TOKENS), 0.0)
    # attention at its own (BF16) roof, expressed in the linear layers' (F_pf) time units
    attn = (full_attn + dep.attn_window_flops * new * win_ctx) * dep.peak_flops / dep.attn_peak_flops
    comm = allreduce_time(dep, eff, new) + alltoall_time(dep, eff, new * dp_ranks(dep))
    gpu_s = (dense + attn + expert) / f_pf + comm * dep.gpus / dp_ranks(dep)
    latency_s = (dense + attn) / (dep.tp * f_pf) + expert / (dep.gpus * f_pf) + comm
    return PrefillCost(gpu_s, latency_s)


def prefill_time(dep: Deployment, eff: Efficiency, isl: jnp.ndarray,
                 cached_share: jnp.ndarray = 0.0) -> jnp.ndarray:
    """Replica time per prefilled request in steady state (GPU-seconds / ``gpus``), s."""
    return prefill_cost(dep, eff, isl, cached_share).gpu_s / dep.gpus


def kv_transfer_time(dep: Deployment, isl: jnp.ndarray) -> jnp.ndarray:
    """Time to move one request's prompt KV from a prefill to a decode replica over scale-out, s.

    Each of the ``tp`` GPUs of the prefill rank sends its shard through its own NIC.
    """
    return kv_bytes_per_sequence(dep, isl) / (jnp.maximum(dep.scaleout_bw, 1.0) * kv_shards(dep))
