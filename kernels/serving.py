"""Serving operating points: throughput per GPU at max batch, at a concurrency, or under an SLO.

Continuous batching with interleaved (chunked) prefill: a replica holding ``B`` sequences spends,
per request, ``T_prefill`` of prefill time plus ``osl · T_token / B`` of its share of decode steps,
so per replica ::

    output tok/s = osl / (T_prefill + osl · T_token(B) / B)      input tok/s = output · isl / osl

where ``T_token`` is the decode step time per emitted token (the step time itself, or the
speculative round time divided by the expected tokens per round). Per-GPU figures divide by the
replica's ``gpus``; disaggregated deployments add the prefill pool's GPUs (:func:`operating_point`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from kernels.roofline import (Deployment, Efficiency, decode_step, kv_transfer_time, max_batch,
                              prefill_cost)


class Workload(NamedTuple):
    """Traffic shape of the requests a deployment serves."""

    isl: jnp.ndarray  # mean input tokens per request
    osl: jnp.ndarray  # mean output tokens per request
    cached_share: jnp.ndarray  # share of input tokens hit in the prefix cache, [0, 1)


class Speculation(NamedTuple):
    """Speculative decoding settings (draft_len = 0 switches it off).

    ``tokens_per_round`` is the expected number of tokens emitted per verify pass ``E[T]`` (measured
    acceptance lengths, e.g. DeepSeek MTP; or ``(1 − a^(k+1))/(1 − a)`` from an iid acceptance
    ``a``, :func:`kernels.speculative.expected_tokens_per_step`).
    """

    draft_len: jnp.ndarray  # k
    tokens_per_round: jnp.ndarray  # E[T] in [1, k + 1]
    draft_cost_ratio: jnp.ndarray  # c_d: a draft step's body (excl. fixed overheads) / a target step's body


NO_SPECULATION = Speculation(0.0, 1.0, 0.0)  # Python floats: weakly typed, no device work on import


class ServingPoint(NamedTuple):
    """One operating point of a deployment (per-GPU rates; times in s)."""

    batch: jnp.ndarray  # concurrent sequences per (decode) replica
    max_batch: jnp.ndarray  # largest batch whose KV fits
    fits: jnp.ndarray  # bool: weights fit and at least one sequence of KV fits
    output_tok_s: jnp.ndarray  # output tokens/s per GPU, prefill GPUs included (0 when it does not fit)
    input_tok_s: jnp.ndarray  # input tokens/s per GPU
    decode_step_s: jnp.ndarray  # one decode step (or speculative round)
    tpot_s: jnp.ndarray  # time per output token seen by one sequence (incl. interleaved prefills)
    prefill_s: jnp.ndarray  # replica time per prefilled request (GPU-s / gpus)
    ttft_s: jnp.ndarray  # own prefill + KV transfer (disaggregated) + one decode step
    memory_bound_share: jnp.ndarray  # t_mem / (t_mem + t_compute) of the decode step
    gpu_s_per_request: jnp.ndarray  # GPU-seconds one request costs (prefill + decode)
    gpu_s_prefill: jnp.ndarray  # GPU-seconds of its prefill (the prefill pool when disaggregated)
    kv_transfer_s: jnp.ndarray  # prompt KV moved prefill -> decode pool (0 when aggregated)


def _decode_token_time(dep, eff, batch, context, spec):
    """(time per round, tokens per round per sequence, plain step breakdown).

    A round is one verify pass of ``k + 1`` tokens per sequence plus ``k`` draft steps, each draft
    step costing the fixed per-step overhead ``t_0`` plus ``c_d`` of the rest of a target step
    (its layers' overheads, weights, KV and collectives) [ECONOMICS.md §3.3].
    """
    # the plain step and the verify pass as one lane pair: the step model is traced (and compiled) once
    per_seq = jnp.stack(jnp.broadcast_arrays(jnp.ones_like(jnp.asarray(spec.draft_len, jnp.result_type(float))),
                                             spec.draft_len + 1.0))
    both = jax.vmap(lambda t: decode_step(dep, eff, batch, context, t))(per_seq)
    plain = jax.tree.map(lambda x: x[0], both)
    verify = jax.tree.map(lambda x: x[1], both)
    spec_on = spec.draft_len > 0
    draft_s = eff.step_overhead_s + spec.draft_cost_ratio * (plain.total_s - eff.step_overhead_s)
    round_s = jnp.where(spec_on, verify.total_s + spec.draft_len * draft_s, plain.total_s)
    tokens = jnp.where(spec_on, jnp.clip(spec.tokens_per_round, 1.0, spec.draft_len + 1.0), 1.0)
    return round_s, tokens, plain


def operating_point(dep: Deployment, eff: Efficiency, wl: Workload, batch: jnp.ndarray,
                    spec: Speculation = NO_SPECULATION,
                    disaggregated: jnp.ndarray = False) -> ServingPoint:
    """Throughput and latency of a deployment holding ``batch`` concurrent sequences per replica.

    Aggregated (``disaggregated`` False): a replica interleaves prefills with decode steps, so in
    steady state each sequence waits for the ``B`` prefills started during its lifetime::

        TPOT = T_token + B · T_prefill / osl,     GPU-s / request = gpus · (T_prefill + osl · T_token / B)

    Disaggregated: prefills run on a separate pool of the same GPUs and layout (GPU-s of prefill
    added, no interference), the prompt KV moves over the scale-out NICs, ``TPOT = T_token`` and
    ``TTFT = prefill + transfer + one step``. Each pool is sized by its own load (the GPU-seconds).

    ``batch`` is clipped to [1, B_max]; a deployment whose weights (or one sequence of KV) do not
    fit gets ``fits = False`` and zero throughput, never a negative or NaN one.
    """
    dis = jnp.asarray(disaggregated, jnp.result_type(float))
    b_max = max_batch(dep, eff, wl.isl + wl.osl)
    fits = b_max >= 1.0
    b = jnp.clip(batch, 1.0, jnp.maximum(b_max, 1.0))
    context = wl.isl + 0.5 * wl.osl
    round_s, tokens, plain = _decode_token_time(dep, eff, b, context, spec)
    token_s = round_s / tokens  # replica time per emitted token per sequence
    pre = prefill_cost(dep, eff, wl.isl, wl.cached_share)
    prefill_s = pre.gpu_s / dep.gpus
    transfer_s = jnp.where(dis > 0.5, kv_transfer_time(dep, wl.isl), 0.0)
    decode_gpu_s = wl.osl * token_s / b * dep.gpus
    gpu_s = pre.gpu_s + decode_gpu_s
    tpot = token_s + jnp.where(dis > 0.5, 0.0, b * prefill_s / wl.osl)
    out_per_gpu = jnp.where(fits, wl.osl / gpu_s, 0.0)
    mem_share = plain.memory_s / (plain.memory_s + plain.compute_s)
    return ServingPoint(
        batch=b, max_batch=b_max, fits=fits, output_tok_s=out_per_gpu,
        input_tok_s=out_per_gpu * wl.isl / wl.osl, decode_step_s=round_s, tpot_s=tpot,
        prefill_s=prefill_s, ttft_s=pre.latency_s + transfer_s + plain.total_s, memory_bound_share=mem_share,
        gpu_s_per_request=gpu_s, gpu_s_prefill=pre.gpu_s, kv_transfer_s=transfer_s)


def max_throughput_point(dep: Deployment, eff: Efficiency, wl: Workload,
                         spec: Speculation = NO_SPECULATION, disaggregated: jnp.ndarray = False) -> ServingPoint:
    """Operating point at the largest batch that fits (offline maximum throughput)."""
    return operating_point(dep, eff, wl, max_batch(dep, eff, wl.isl + wl.osl), spec, disaggregated)


BISECTION_STEPS = 48
"""Bisection iterations in log-batch space (resolves 2^-48 of the log range, ~1e-14 relative)."""


def _slo_slack(b, dep, eff, wl, tpot_s, ttft_s, spec, dis):
    """``max(TPOT/τ, TTFT/τ') − 1`` at batch ``b``: increasing in ``b``, ≤ 0 where the SLO holds."""
    p = operating_point(dep, eff, wl, b, spec, dis)
    return jnp.maximum(p.tpot_s / tpot_s, p.ttft_s / ttft_s) - 1.0


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _slo_root(steps, log_hi, dep, eff, wl, tpot_s, ttft_s, spec, dis):
    """Largest ``b`` in ``[1, exp(log_hi)]`` with slack ≤ 0, by ``steps`` bisections on ``log b``
    (the feasible end of the final bracket)."""

    def body(_, lohi):
        lo, hi = lohi
        mid = 0.5 * (lo + hi)
        ok = _slo_slack(jnp.exp(mid), dep, eff, wl, tpot_s, ttft_s, spec, dis) <= 0.0
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, _ = jax.lax.fori_loop(0, steps, body, (jnp.zeros_like(log_hi), log_hi))
    return jnp.exp(lo)


@_slo_root.defjvp
def _slo_root_jvp(steps, primals, tangents):
    """Implicit function theorem at an interior root: ``db = −(∂g/∂θ · dθ) / (∂g/∂b)``."""
    log_hi, *theta = primals
    _, *dtheta = tangents
    b = _slo_root(steps, log_hi, *theta)
    slack_at = lambda bb, *th: _slo_slack(bb, *th)  # noqa: E731
    _, dg_theta = jax.jvp(lambda *th: slack_at(b, *th), tuple(theta), tuple(dtheta))
    _, dg_b = jax.jvp(lambda bb: slack_at(bb, *theta), (b,), (jnp.ones_like(b),))
    dg_b = jnp.where(jnp.abs(dg_b) > 0, dg_b, 1.0)
    return b, -dg_theta / dg_b


def slo_point(dep: Deployment, eff: Efficiency, wl: Workload, tpot_s: jnp.ndarray,
              ttft_s: jnp.ndarray, spec: Speculation = NO_SPECULATION,
              steps: int = BISECTION_STEPS, disaggregated: jnp.ndarray = False) -> tuple[ServingPoint, jnp.ndarray]:
    """The operating point at the largest batch in [1, B_max] whose TPOT ≤ ``tpot_s`` and TTFT ≤ ``ttft_s``.

    Both latencies increase with the batch, so the slack ``g(B) = max(TPOT/τ, TTFT/τ') − 1`` has
    one root; it is found by bisection on ``log B`` and differentiated implicitly
    (``dB/dθ = −∂g/∂θ / ∂g/∂B``, a ``custom_jvp``: the forward pass traces only the bisection).
    Pass ``inf`` for an absent target. ``steps`` (static) bisections leave the batch within
    ``log(B_max) · 2^-steps`` (relative, on the feasible side) of the root.

    The points at both ends of the bracket (which decide feasibility and a batch capped by memory)
    and at the root are one evaluation of three lanes, so the cost model appears twice in the
    program (here and in the bisection's body) instead of three times.

    Returns:
      ``(point, feasible)``: :func:`operating_point` at that batch; ``feasible`` is False when even
      one sequence misses the SLO or the deployment does not fit (the point is then at batch 1).
    """
    tpot_s, ttft_s = jnp.asarray(tpot_s), jnp.asarray(ttft_s)
    dis = jnp.asarray(disaggregated, jnp.result_type(float))
    b_max = max_batch(dep, eff, wl.isl + wl.osl)
    hi0 = jnp.maximum(b_max, 1.0)
    b_root = _slo_root(steps, jax.lax.stop_gradient(jnp.log(hi0)), dep, eff, wl, tpot_s, ttft_s, spec, dis)
    lanes = jnp.stack(jnp.broadcast_arrays(jnp.ones_like(hi0), hi0, b_root))  # 1, B_max, root
    pts = jax.vmap(lambda b: operating_point(dep, eff, wl, b, spec, dis))(lanes)
    slack = jax.lax.stop_gradient(jnp.maximum(pts.tpot_s / tpot_s, pts.ttft_s / ttft_s) - 1.0)
    at_cap = slack[1] <= 0.0
    feasible = (b_max >= 1.0) & (slack[0] <= 0.0)
    point = jax.tree.map(lambda x: jnp.where(feasible, jnp.where(at_cap, x[1], x[2]), x[0]), pts)
    return point, feasible


def slo_batch(dep: Deployment, eff: Efficiency, wl: Workload, tpot_s: jnp.ndarray,
              ttft_s: jnp.ndarray, spec: Speculation = NO_SPECULATION,
              steps: int = BISECTION_STEPS, disaggregated: jnp.ndarray = False) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Largest batch in [1, B_max] whose TPOT ≤ ``tpot_s`` and TTFT ≤ ``ttft_s`` (:func:`slo_point`).

    Returns:
      ``(batch, feasible)``: ``feasible`` is False when even one sequence misses the SLO or the
      deployment does not fit (``batch`` is then 1).
    """
    point, feasible = slo_point(dep, eff, wl, tpot_s, ttft_s, spec, steps, disaggregated)
    return point.batch, feasible
