"""Serving operating points: throughput per GPU at max batch, at a concurrency, or under an SLO.

Continuous batching with interleaved (chunked) prefill: a replica holding ``B`` sequences spends,
per request, ``T_prefill`` of prefill time plus ``osl · T_token / B`` of its share of decode steps,
so per replica ::

    output tok/s = osl / (T_prefill + osl · T_token(B) / B)      input tok/s = output · isl / osl

where ``T_token`` is the decode step time per emitted token (the step time itself, or the
speculative round time divided by the expected tokens per round). Per-GPU figures divide by ``tp``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from kernels.roofline import Deployment, Efficiency, decode_step, max_batch, prefill_time
from kernels.speculative import expected_tokens_per_step, speculative_time_per_step


class Workload(NamedTuple):
    """Traffic shape of the requests a deployment serves."""

    isl: jnp.ndarray  # mean input tokens per request
    osl: jnp.ndarray  # mean output tokens per request
    cached_share: jnp.ndarray  # share of input tokens hit in the prefix cache, [0, 1)


class Speculation(NamedTuple):
    """Speculative decoding settings (draft_len = 0 switches it off)."""

    draft_len: jnp.ndarray  # k
    acceptance: jnp.ndarray  # a
    draft_cost_ratio: jnp.ndarray  # c_d


NO_SPECULATION = Speculation(jnp.asarray(0.0), jnp.asarray(0.0), jnp.asarray(0.0))


class ServingPoint(NamedTuple):
    """One operating point of a deployment (per-GPU rates; times in s)."""

    batch: jnp.ndarray  # concurrent sequences per replica
    max_batch: jnp.ndarray  # largest batch whose KV fits
    fits: jnp.ndarray  # bool: weights fit and at least one sequence of KV fits
    output_tok_s: jnp.ndarray  # output tokens/s per GPU (0 when it does not fit)
    input_tok_s: jnp.ndarray  # input tokens/s per GPU
    decode_step_s: jnp.ndarray  # one decode step (or speculative round)
    tpot_s: jnp.ndarray  # time per output token seen by one sequence
    prefill_s: jnp.ndarray  # replica time to prefill one request
    ttft_s: jnp.ndarray  # prefill + one decode step
    memory_bound_share: jnp.ndarray  # t_mem / (t_mem + t_compute) of the decode step
    gpu_s_per_request: jnp.ndarray  # GPU-seconds one request costs (prefill + decode share)
    gpu_s_prefill: jnp.ndarray  # GPU-seconds of its prefill


def _decode_token_time(dep, eff, batch, context, spec):
    """(time per round, tokens per round per sequence, plain step breakdown)."""
    plain = decode_step(dep, eff, batch, context, 1.0)
    verify = decode_step(dep, eff, batch, context, spec.draft_len + 1.0)
    spec_on = spec.draft_len > 0
    round_s = jnp.where(spec_on,
                        speculative_time_per_step(verify.total_s, plain.total_s, spec.draft_len,
                                                  spec.draft_cost_ratio),
                        plain.total_s)
    tokens = jnp.where(spec_on, expected_tokens_per_step(spec.acceptance, spec.draft_len), 1.0)
    return round_s, tokens, plain


def operating_point(dep: Deployment, eff: Efficiency, wl: Workload, batch: jnp.ndarray,
                    spec: Speculation = NO_SPECULATION) -> ServingPoint:
    """Throughput and latency of a deployment holding ``batch`` concurrent sequences.

    ``batch`` is clipped to [1, B_max]; a deployment whose weights (or one sequence of KV) do not
    fit gets ``fits = False`` and zero throughput, never a negative or NaN one.
    """
    b_max = max_batch(dep, eff, wl.isl + wl.osl)
    fits = b_max >= 1.0
    b = jnp.clip(batch, 1.0, jnp.maximum(b_max, 1.0))
    context = wl.isl + 0.5 * wl.osl
    round_s, tokens, plain = _decode_token_time(dep, eff, b, context, spec)
    token_s = round_s / tokens  # replica time per emitted token per sequence
    prefill_s = prefill_time(dep, eff, wl.isl, wl.cached_share)
    replica_s_per_request = prefill_s + wl.osl * token_s / b
    out_per_gpu = wl.osl / replica_s_per_request / dep.tp
    out_per_gpu = jnp.where(fits, out_per_gpu, 0.0)
    mem_share = plain.memory_s / (plain.memory_s + plain.compute_s)
    return ServingPoint(
        batch=b, max_batch=b_max, fits=fits, output_tok_s=out_per_gpu,
        input_tok_s=out_per_gpu * wl.isl / wl.osl, decode_step_s=round_s, tpot_s=token_s,
        prefill_s=prefill_s, ttft_s=prefill_s + plain.total_s, memory_bound_share=mem_share,
        gpu_s_per_request=replica_s_per_request * dep.tp, gpu_s_prefill=prefill_s * dep.tp)


def max_throughput_point(dep: Deployment, eff: Efficiency, wl: Workload,
                         spec: Speculation = NO_SPECULATION) -> ServingPoint:
    """Operating point at the largest batch that fits (offline maximum throughput)."""
    return operating_point(dep, eff, wl, max_batch(dep, eff, wl.isl + wl.osl), spec)


BISECTION_STEPS = 48
"""Bisection iterations in log-batch space (resolves 2^-48 of the log range)."""


def slo_batch(dep: Deployment, eff: Efficiency, wl: Workload, tpot_s: jnp.ndarray,
              ttft_s: jnp.ndarray, spec: Speculation = NO_SPECULATION) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Largest batch in [1, B_max] whose TPOT ≤ ``tpot_s`` and TTFT ≤ ``ttft_s``.

    Both latencies increase with the batch, so the slack ``g(B) = max(TPOT/τ, TTFT/τ') − 1`` has
    one root; it is found by bisection on ``log B`` and differentiated implicitly
    (``dB/dθ = −∂g/∂θ / ∂g/∂B``) through one Newton correction whose value is zero at the root.
    Pass ``inf`` for an absent target.

    Returns:
      ``(batch, feasible)``: ``feasible`` is False when even one sequence misses the SLO or the
      deployment does not fit (``batch`` is then 1).
    """
    b_max = max_batch(dep, eff, wl.isl + wl.osl)
    hi0 = jnp.maximum(b_max, 1.0)

    def slack(b):
        p = operating_point(dep, eff, wl, b, spec)
        return jnp.maximum(p.tpot_s / tpot_s, p.ttft_s / ttft_s) - 1.0

    def body(_, lohi):
        lo, hi = lohi
        mid = 0.5 * (lo + hi)
        ok = slack(jnp.exp(mid)) <= 0.0
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, hi = jax.lax.stop_gradient((jnp.zeros_like(hi0), jnp.log(hi0)))
    lo, hi = jax.lax.fori_loop(0, BISECTION_STEPS, body, (lo, hi))
    b_root = jax.lax.stop_gradient(jnp.exp(lo))
    at_cap = jax.lax.stop_gradient(slack(hi0) <= 0.0)
    # Implicit-function gradient at an interior root; value unchanged (correction is ~0 there).
    dg = jax.grad(lambda b: slack(b).sum())(b_root)
    dg = jax.lax.stop_gradient(jnp.where(jnp.abs(dg) > 0, dg, 1.0))
    b_interior = b_root - (slack(b_root) - jax.lax.stop_gradient(slack(b_root))) / dg
    batch = jnp.where(at_cap, hi0, b_interior)
    feasible = (b_max >= 1.0) & (slack(jnp.ones_like(hi0)) <= 0.0)
    return jnp.where(feasible, batch, 1.0), feasible
