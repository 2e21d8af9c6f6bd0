"""Roofline model of one LLM deployment: memory fit, prefill time and decode step time.

A *deployment* is (model, precision, GPU type, tensor-parallel degree). All sizes are per
**replica** (``tp`` GPUs that hold one copy of the model) unless a name says per GPU.

Decode step (Pope et al. 2023; Austin et al., *How to Scale Your Model*, "All About Transformer
Inference"; ECONOMICS.md §3.1)::

    bytes(B)  = W_dense + W_experts · f_distinct(B·q) / η_moe + B · KV_seq(ctx)
    flops(B)  = B · q · (2 · (N_active − N_expert) + 2 · N_expert / η_moe + A · ctx)
    T_step(B) = t_0 + smax(bytes / (tp · BW · η_bw), flops / (tp · F · η_fl)) + T_allreduce(B·q)

with ``q`` tokens per sequence per step (1, or k+1 when verifying speculative drafts), ``A`` the
attention FLOPs per (query token × context token) and ``f_distinct`` the expected share of routed
experts touched (:mod:`kernels.moe`). ``η_moe`` is the efficiency of routed-expert (grouped, few
rows per expert, plus dispatch) GEMMs relative to dense ones; it is 1 for dense models' weights. Prefill is compute-bound and batched across requests, so its
weight reads are amortised::

    T_prefill = (2 · N_active · n_new + A · (isl² − cached²)/2) / (tp · F · η_pf) + T_allreduce(n_new)

Prefill has its own compute efficiency ``η_pf``: its GEMMs have thousands of rows and run near the
measured best matmul rate, while decode GEMMs have only ``B`` rows.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from kernels.moe import distinct_expert_fraction
from kernels.smooth import smooth_max_pos, soft_clip_below


class Deployment(NamedTuple):
    """Arrays describing one deployment (all scalars or broadcastable batches)."""

    weight_bytes: jnp.ndarray  # total weights incl. all experts at serving precision, bytes per replica
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
    hidden_size: jnp.ndarray  # model width, elements
    hbm_bytes: jnp.ndarray  # memory per GPU, bytes
    mem_bw: jnp.ndarray  # memory bandwidth per GPU, bytes/s
    peak_flops: jnp.ndarray  # dense tensor peak per GPU at the precision's math roof, FLOP/s
    link_bw: jnp.ndarray  # scale-up bandwidth per GPU per direction, bytes/s
    tp: jnp.ndarray  # GPUs per replica (tensor-parallel degree)


class Efficiency(NamedTuple):
    """Calibrated efficiency factors (see ``tokenmargin-calibrate``)."""

    bw_eff: jnp.ndarray  # achieved / peak memory bandwidth, in (0, 1]
    flops_eff: jnp.ndarray  # achieved / peak tensor FLOPS in decode steps, in (0, 1]
    prefill_flops_eff: jnp.ndarray  # achieved / peak tensor FLOPS in prefill, in (0, 1]
    moe_eff: jnp.ndarray  # relative efficiency of routed-expert (grouped) GEMMs vs dense ones, in (0, 1]
    step_overhead_s: jnp.ndarray  # fixed time per decode step, s
    mem_util: jnp.ndarray  # usable share of HBM for weights + KV, in (0, 1]


ACTIVATION_BYTES = 2.0
"""Bytes per activation element in tensor-parallel all-reduces (16-bit activations)."""

WINDOW_SOFTNESS_TOKENS = 16.0
"""Transition width of the smooth ``min(ctx, window)``, tokens (numerical choice)."""


def kv_bytes_per_sequence(dep: Deployment, context: jnp.ndarray) -> jnp.ndarray:
    """KV-cache bytes held by one sequence with ``context`` tokens.

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


def free_kv_bytes(dep: Deployment, eff: Efficiency) -> jnp.ndarray:
    """Bytes left for the KV cache per replica: ``tp · HBM · u − W`` (negative = does not fit)."""
    return dep.tp * dep.hbm_bytes * eff.mem_util - dep.weight_bytes


def max_batch(dep: Deployment, eff: Efficiency, max_context: jnp.ndarray) -> jnp.ndarray:
    """Largest number of concurrent sequences whose KV cache fits (continuous, may be ≤ 0).

    ``B_max = (tp · HBM · u − W) / KV_seq(max_context)``.
    """
    return free_kv_bytes(dep, eff) / jnp.maximum(kv_bytes_per_sequence(dep, max_context), 1.0)


def allreduce_time(dep: Deployment, tokens: jnp.ndarray) -> jnp.ndarray:
    """Tensor-parallel communication time for ``tokens`` tokens through every layer, s.

    Two ring all-reduces per layer of ``tokens · hidden · 2`` bytes, each costing
    ``2 (tp − 1)/tp · bytes / link_bw``. Zero when ``tp == 1``.
    """
    per_layer_bytes = 2.0 * tokens * dep.hidden_size * ACTIVATION_BYTES
    ring = 2.0 * (dep.tp - 1.0) / dep.tp
    return dep.layers * ring * per_layer_bytes / jnp.maximum(dep.link_bw, 1.0)


class StepBreakdown(NamedTuple):
    """Decode step time and its parts, s."""

    total_s: jnp.ndarray
    memory_s: jnp.ndarray  # bytes / achieved bandwidth
    compute_s: jnp.ndarray  # FLOPs / achieved compute
    comm_s: jnp.ndarray  # tensor-parallel all-reduce
    overhead_s: jnp.ndarray


def decode_step(dep: Deployment, eff: Efficiency, batch: jnp.ndarray, context: jnp.ndarray,
                tokens_per_seq: jnp.ndarray = 1.0) -> StepBreakdown:
    """Time of one decode step of ``batch`` sequences at mean ``context`` tokens.

    Args:
      dep, eff: the deployment and its efficiency factors.
      batch: concurrent sequences in the replica, ≥ 0.
      context: mean tokens of context per sequence during decode.
      tokens_per_seq: tokens processed per sequence in this step (k + 1 when verifying drafts).

    Returns:
      :class:`StepBreakdown`, seconds.
    """
    tokens = batch * tokens_per_seq
    touched = distinct_expert_fraction(tokens, dep.num_experts, dep.experts_per_token)
    bytes_moved = (dep.dense_weight_bytes + dep.expert_weight_bytes * touched / eff.moe_eff
                   + batch * kv_bytes_per_sequence(dep, context))
    flops = tokens * (2.0 * (dep.active_params - dep.expert_active_params)
                      + 2.0 * dep.expert_active_params / eff.moe_eff
                      + attention_flops_per_token(dep, context))
    memory_s = bytes_moved / (dep.tp * dep.mem_bw * eff.bw_eff)
    compute_s = flops / (dep.tp * dep.peak_flops * eff.flops_eff)
    comm_s = allreduce_time(dep, tokens)
    total = eff.step_overhead_s + smooth_max_pos(memory_s, compute_s) + comm_s
    return StepBreakdown(total, memory_s, compute_s, comm_s, jnp.broadcast_to(eff.step_overhead_s, jnp.shape(total)))


def prefill_time(dep: Deployment, eff: Efficiency, isl: jnp.ndarray,
                 cached_share: jnp.ndarray = 0.0) -> jnp.ndarray:
    """Replica time to prefill one request of ``isl`` tokens, a share of them prefix-cached, s.

    Compute-bound (prefill batches thousands of tokens, so weight reads are amortised). Cached
    tokens skip their linear-layer FLOPs and their own causal attention; new tokens still attend
    to the whole prompt.
    """
    cached = isl * cached_share
    new = isl - cached
    linear = 2.0 * (dep.active_params - dep.expert_active_params + dep.expert_active_params / eff.moe_eff) * new
    full_attn = dep.attn_prefill_flops * 0.5 * (isl**2 - cached**2)
    w = dep.window_tokens
    # Windowed layers: each new token attends to at most `w` tokens.
    win_ctx = jnp.maximum(soft_clip_below(0.5 * (isl + cached), w, WINDOW_SOFTNESS_TOKENS), 0.0)
    window_attn = dep.attn_window_flops * new * win_ctx
    compute_s = (linear + full_attn + window_attn) / (dep.tp * dep.peak_flops * eff.prefill_flops_eff)
    return compute_s + allreduce_time(dep, new)
