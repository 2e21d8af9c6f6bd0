"""Scenario config → the arrays of the margin problem (the one place this happens for `tokenmargin`).

Axes: ``S`` segments, ``J`` models (those offered to some segment), ``K`` precisions, ``G`` GPU types.
A *pool* is one (GPU type, model, precision) with a fixed tensor-parallel degree; every segment's
request on a pool costs a number of GPU-seconds computed by the cost kernels at that segment's
request shape and SLO (:func:`serving_table`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kernels.demand import DemandParams, calibrate_logit
from kernels.roofline import Deployment, Efficiency
from kernels.serving import Workload, operating_point, slo_batch
from optimizer import catalog
from optimizer.errors import ConfigError
from optimizer.params import build_deployment, efficiency_for, gpu_hour_cost, peak_tflops
from optimizer.schema import PRECISION_KEYS, RunConfig, SegmentConfig

SECONDS_PER_DAY = 86400.0
NO_CAP = 1e30
"""Stand-in for an absent cap (kept finite so gradients and JSON stay clean)."""


class Problem(NamedTuple):
    """All numbers of one scenario (a pytree of arrays; vmappable over scenarios)."""

    demand: DemandParams
    quality: jnp.ndarray  # (J, K) quality retention of model j at precision k
    mix_mask: jnp.ndarray  # (S, J, K) 1.0 where precision k may serve segment s on model j
    route_mask: jnp.ndarray  # (S, J, K, G) 1.0 where pool (g, j, k) can serve segment s within its SLO
    gpu_s_per_request: jnp.ndarray  # (S, J, K, G) GPU-seconds per request at the segment's SLO
    batch_at_slo: jnp.ndarray  # (S, J, K, G) concurrent sequences per replica at the SLO
    tpot_ms: jnp.ndarray  # (S, J, K, G) served TPOT, ms
    usd_per_gpu_hour: jnp.ndarray  # (G,)
    capex_per_gpu: jnp.ndarray  # (G,) USD (0 where unknown)
    tp: jnp.ndarray  # (G, J, K) GPUs per replica (0 where the pool is unavailable)
    is_batch: jnp.ndarray  # (S,) bool
    peak_to_mean: jnp.ndarray  # (S,)
    served_latency_ms: jnp.ndarray  # (S,) TPOT the segment is served at (its SLO, or its reference)
    gpu_cap: jnp.ndarray  # (G,) max GPUs (NO_CAP if none)
    budget_usd_per_day: jnp.ndarray  # () (NO_CAP if none)
    capex_budget_usd: jnp.ndarray  # () (NO_CAP if none)
    min_quality: jnp.ndarray  # (S,) (0 if none)
    log_mu_lo: jnp.ndarray  # (S,) lower bound of log(price / reference price)
    log_mu_hi: jnp.ndarray  # (S,) upper bound
    peak_utilization: jnp.ndarray  # ()
    daily_utilization: jnp.ndarray  # ()
    scale: jnp.ndarray  # () USD/day used to normalise the objective (reference revenue)


@dataclass(frozen=True)
class Labels:
    """Names and static facts of a problem (hashable; not traced)."""

    segments: tuple[str, ...]
    models: tuple[str, ...]
    precisions: tuple[str, ...]
    gpus: tuple[str, ...]
    tiers: tuple[str, ...]
    has_gpu_cap: tuple[bool, ...]
    has_budget: bool
    has_capex_budget: bool
    has_min_quality: tuple[bool, ...]
    isl: tuple[float, ...] = ()  # (S,) mean input tokens per request
    osl: tuple[float, ...] = ()  # (S,) mean output tokens per request
    cached_share: tuple[float, ...] = ()  # (S,)
    cached_price_ratio: tuple[float, ...] = ()  # (S,)
    ref_input_usd_per_mtok: tuple[tuple[float, ...], ...] = ()  # (S, J), 0 where not offered
    ref_output_usd_per_mtok: tuple[tuple[float, ...], ...] = ()  # (S, J)
    scenario: str = ""


DEFAULT_LOG_MU = (math.log(0.02), math.log(50.0))
"""Price search range when no floor/ceiling is given: 1/50 to 50x the reference price."""


def _validate_segment(name: str, s: SegmentConfig) -> None:
    def bad(field, value, accepted):
        raise ConfigError(f"demand.segments.{name}.{field} = {value!r} is invalid; accepted: {accepted}")

    if s.tier not in ("interactive", "batch"):
        bad("tier", s.tier, "'interactive' or 'batch'")
    if s.demand not in ("logit", "constant_elasticity"):
        bad("demand", s.demand, "'logit' or 'constant_elasticity'")
    if not s.elasticity > 0:
        bad("elasticity", s.elasticity, "a positive number")
    if s.demand == "constant_elasticity" and not s.elasticity > 1:
        raise ConfigError(f"demand.segments.{name}.elasticity = {s.elasticity} with constant_elasticity demand "
                          f"has no finite optimal price (profit grows without bound as price rises when "
                          f"elasticity <= 1); use elasticity > 1 or demand=logit")
    if not 0 < s.ref_market_share < 1:
        bad("ref_market_share", s.ref_market_share, "a share in (0, 1)")
    for f in ("input_tokens_per_day", "isl", "osl"):
        if not getattr(s, f) > 0:
            bad(f, getattr(s, f), "a positive number")
    if not 0 <= s.cached_share < 1:
        bad("cached_share", s.cached_share, "[0, 1)")
    if not 0 <= s.cached_price_ratio <= 1:
        bad("cached_price_ratio", s.cached_price_ratio, "[0, 1]")
    if not s.peak_to_mean >= 1:
        bad("peak_to_mean", s.peak_to_mean, "a ratio >= 1")
    if not s.offers:
        bad("offers", {}, "at least one model key with reference prices")
    for m, o in s.offers.items():
        if not (o.input_usd_per_mtok > 0 and o.output_usd_per_mtok > 0):
            raise ConfigError(f"demand.segments.{name}.offers.{m}: prices must be > 0 USD/Mtok, got input "
                              f"{o.input_usd_per_mtok}, output {o.output_usd_per_mtok}")
        if not o.volume_share > 0:
            bad(f"offers.{m}.volume_share", o.volume_share, "a positive number")
    for f in ("tpot_ms", "ttft_ms", "ref_tpot_ms"):
        v = getattr(s, f)
        if v is not None and not v > 0:
            bad(f, v, "a positive number of ms or null")
    lo, hi = s.price_floor_ratio, s.price_ceiling_ratio
    if lo is not None and not lo > 0:
        bad("price_floor_ratio", lo, "a positive multiple of the reference price or null")
    if hi is not None and not hi > 0:
        bad("price_ceiling_ratio", hi, "a positive multiple of the reference price or null")
    if lo is not None and hi is not None and not lo < hi:
        raise ConfigError(f"demand.segments.{name}: price_floor_ratio {lo} must be below price_ceiling_ratio {hi}")
    if s.min_quality is not None and not 0 < s.min_quality <= 1:
        bad("min_quality", s.min_quality, "a retention fraction in (0, 1] or null")


def choose_tp(dep_for_tp, hw, usable_share: float, max_context: float) -> int | None:
    """Smallest power-of-two TP (within the scale-up domain) whose weights take at most half the
    usable memory, else the largest TP that fits one max-context sequence; None if none fits.

    Half the memory for KV is a serving heuristic (ASSUMPTION), not an optimum.
    """
    domain = max(int(hw.scaleup_domain_gpus), 1) if hw.scaleup_bw_gb_s > 0 else 1
    options = [2**i for i in range(int(math.log2(domain)) + 1)]
    fitting = None
    for tp in options:
        dep = dep_for_tp(tp)
        usable = tp * hw.memory_gb * 1e9 * usable_share
        weights = float(dep.weight_bytes)
        if weights <= 0.5 * usable:
            return tp
        # host-side arithmetic (no XLA dispatch): KV of one max-context sequence
        kv = float(dep.kv_full_bytes_per_token) * max_context + float(dep.kv_window_bytes_per_token) * min(
            max_context, float(dep.window_tokens))
        if usable - weights >= kv:
            fitting = tp
    return fitting


def serving_table(deps: Deployment, effs: Efficiency, wls: Workload, tpot_s: jnp.ndarray,
                  ttft_s: jnp.ndarray):
    """GPU-seconds per request, batch and TPOT of every (segment, pool) at the segment's SLO.

    Args:
      deps, effs: stacked over pools (leading axis P). wls, tpot_s, ttft_s: stacked over segments (S).

    Returns:
      ``(gpu_s (S, P), feasible (S, P), batch (S, P), tpot_s (S, P))``. Pure and jittable.
    """

    def one(dep, eff, wl, tpot, ttft):
        b, ok = slo_batch(dep, eff, wl, tpot, ttft)
        p = operating_point(dep, eff, wl, b)
        return p.gpu_s_per_request, ok & p.fits, b, p.tpot_s

    per_pool = jax.vmap(one, in_axes=(0, 0, None, None, None))
    return jax.vmap(per_pool, in_axes=(None, None, 0, 0, 0))(deps, effs, wls, tpot_s, ttft_s)


serving_table_jit = jax.jit(serving_table)


def build_problem(cfg: RunConfig) -> tuple[Problem, Labels]:
    """Validate a scenario and build its :class:`Problem` arrays and :class:`Labels`.

    Raises:
      ConfigError (and subclasses) naming the field and the accepted values: bad segment fields,
      unknown catalog names, a model that fits no GPU, a segment with no feasible deployment.
    """
    d, fl = cfg.demand, cfg.fleet
    if not d.segments:
        raise ConfigError("demand.segments is empty; define at least one segment")
    for name, seg in d.segments.items():
        _validate_segment(name, seg)
    for k in fl.precisions:
        if k not in PRECISION_KEYS:
            raise ConfigError(f"fleet.precisions contains '{k}'; accepted: {list(PRECISION_KEYS)}")
    if not fl.gpus:
        raise ConfigError("fleet.gpus is empty; list at least one GPU key, e.g. [h100-sxm, h200-sxm, b200]")
    for f in ("peak_utilization", "daily_utilization"):
        if not 0 < getattr(fl, f) <= 1:
            raise ConfigError(f"fleet.{f} = {getattr(fl, f)} must be in (0, 1]")
    for g in list(fl.gpu_caps) + list(fl.price_usd_per_gpu_hour):
        if g not in fl.gpus:
            raise ConfigError(f"fleet caps/prices name GPU '{g}' that is not in fleet.gpus {list(fl.gpus)}")
    seg_names = tuple(d.segments)
    segs = [d.segments[n] for n in seg_names]
    models = tuple(dict.fromkeys(m for s in segs for m in s.offers))
    hws = [catalog.load_hardware(g) for g in fl.gpus]
    mcs = [catalog.load_model(m) for m in models]
    precs = [catalog.load_precision(k) for k in fl.precisions]
    S, J, K, G = len(segs), len(models), len(precs), len(hws)
    for s, seg in zip(seg_names, segs):
        for m in seg.offers:
            mc = mcs[models.index(m)]
            if seg.isl + seg.osl > mc.max_context:
                raise ConfigError(f"demand.segments.{s}: isl + osl = {seg.isl + seg.osl:g} exceeds model '{m}' "
                                  f"max_context {mc.max_context}")

    # ---- pools: (g, j, k) with a TP degree
    max_ctx = max(s.isl + s.osl for s in segs)
    pool_deps, pool_effs, pool_idx = [], [], []
    tp = np.zeros((G, J, K))
    for gi, hw in enumerate(hws):
        eff = efficiency_for(cfg.efficiency, hw.family)
        for ji, mc in enumerate(mcs):
            for ki, pc in enumerate(precs):
                if peak_tflops(hw, pc.compute) is None:
                    continue
                t = choose_tp(lambda n: build_deployment(hw, mc, pc, n, np.float64), hw, cfg.efficiency.mem_util,
                              max_ctx)
                if t is None:
                    continue
                tp[gi, ji, ki] = t
                pool_deps.append(build_deployment(hw, mc, pc, t))
                pool_effs.append(eff)
                pool_idx.append((gi, ji, ki))
    for ji, m in enumerate(models):
        if not tp[:, ji, :].any():
            raise ConfigError(f"model '{m}' fits none of the fleet's GPUs {list(fl.gpus)} at precisions "
                              f"{list(fl.precisions)} (within one scale-up domain); add a larger GPU or a "
                              f"lower precision")
    stack = lambda xs: jax.tree.map(lambda *a: jnp.stack(a), *xs)  # noqa: E731
    f64 = lambda x: jnp.asarray(x, jnp.float64)  # noqa: E731
    wls = Workload(f64([s.isl for s in segs]), f64([s.osl for s in segs]), f64([s.cached_share for s in segs]))
    interactive = [s.tier == "interactive" for s in segs]
    tpot = f64([(s.tpot_ms / 1e3) if (s.tpot_ms and it) else jnp.inf for s, it in zip(segs, interactive)])
    ttft = f64([(s.ttft_ms / 1e3) if (s.ttft_ms and it) else jnp.inf for s, it in zip(segs, interactive)])
    gpu_s, ok, batch, tpot_served = (np.asarray(x) for x in serving_table_jit(
        stack(pool_deps), stack(pool_effs), wls, tpot, ttft))

    gpu_s_t = np.zeros((S, J, K, G))
    route = np.zeros((S, J, K, G))
    batch_t = np.zeros((S, J, K, G))
    tpot_t = np.zeros((S, J, K, G))
    offer = np.zeros((S, J))
    for si, seg in enumerate(segs):
        for m in seg.offers:
            offer[si, models.index(m)] = 1.0
    for p, (gi, ji, ki) in enumerate(pool_idx):
        for si in range(S):
            if offer[si, ji] and ok[si, p] and np.isfinite(gpu_s[si, p]):
                route[si, ji, ki, gi] = 1.0
                gpu_s_t[si, ji, ki, gi] = gpu_s[si, p]
                batch_t[si, ji, ki, gi] = batch[si, p]
                tpot_t[si, ji, ki, gi] = tpot_served[si, p] * 1e3
    for si, (s, seg) in enumerate(zip(seg_names, segs)):
        for m in seg.offers:
            if not route[si, models.index(m)].any():
                raise ConfigError(
                    f"segment '{s}' has no feasible deployment for model '{m}': no pool of GPUs "
                    f"{list(fl.gpus)} x precisions {list(fl.precisions)} meets tpot_ms={seg.tpot_ms}, "
                    f"ttft_ms={seg.ttft_ms} at isl={seg.isl:g}, osl={seg.osl:g}; relax the SLO or add GPUs")
    mix_mask = (route.sum(-1) > 0).astype(float)

    # ---- demand
    quality = np.asarray([[getattr(mc.quality, pc.key) for pc in precs] for mc in mcs])
    ref_in = np.zeros((S, J))
    ref_out = np.zeros((S, J))
    share = np.zeros((S, J))
    for si, seg in enumerate(segs):
        for m, o in seg.offers.items():
            ji = models.index(m)
            ref_in[si, ji], ref_out[si, ji], share[si, ji] = o.input_usd_per_mtok, o.output_usd_per_mtok, o.volume_share
    isl = np.asarray([s.isl for s in segs])[:, None]
    osl = np.asarray([s.osl for s in segs])[:, None]
    h = np.asarray([s.cached_share for s in segs])[:, None]
    cr = np.asarray([s.cached_price_ratio for s in segs])[:, None]
    ref_price = (ref_in * isl * (1 - h) + ref_in * cr * isl * h + ref_out * osl) / 1e6 * offer
    share = share * offer / np.maximum((share * offer).sum(-1, keepdims=True), 1e-30)
    ref_requests = np.asarray([s.input_tokens_per_day for s in segs]) / isl[:, 0]
    ref_demand = ref_requests[:, None] * share
    is_logit = np.asarray([s.demand == "logit" for s in segs])
    eps = np.asarray([s.elasticity for s in segs])
    msh = np.asarray([s.ref_market_share for s in segs])
    market, beta, alpha = jax.jit(calibrate_logit)(f64(np.where(offer > 0, ref_price, 1.0)), f64(share), f64(offer),
                                          f64(ref_requests), f64(msh), f64(eps))
    served_lat = np.asarray([(s.tpot_ms if s.tpot_ms else (s.ref_tpot_ms or 0.0)) for s in segs])
    ref_lat = np.asarray([(s.ref_tpot_ms if s.ref_tpot_ms is not None else (s.tpot_ms or 0.0)) for s in segs])
    dp = DemandParams(ref_demand=f64(ref_demand), ref_price=f64(ref_price), offer_mask=f64(offer),
                      is_logit=jnp.asarray(is_logit), elasticity=f64(eps), market=market, beta=beta, alpha=alpha,
                      quality_sens=f64([s.quality_sensitivity for s in segs]),
                      latency_sens=f64([s.latency_sensitivity for s in segs]),
                      ref_quality=f64(np.ones((S, J))), ref_latency_ms=f64(ref_lat))

    prices = np.asarray([fl.price_usd_per_gpu_hour.get(hw.key, None) or gpu_hour_cost(hw, fl.cost) for hw in hws])
    capex = np.asarray([hw.capex_usd_per_gpu or 0.0 for hw in hws])
    if fl.capex_budget_usd is not None and (capex == 0).any():
        missing = [hw.key for hw in hws if not hw.capex_usd_per_gpu]
        raise ConfigError(f"fleet.capex_budget_usd needs a capex for every GPU; missing for {missing}")
    caps = np.asarray([fl.gpu_caps.get(hw.key, NO_CAP) for hw in hws], float)
    lo = np.asarray([math.log(s.price_floor_ratio) if s.price_floor_ratio else DEFAULT_LOG_MU[0] for s in segs])
    hi = np.asarray([math.log(s.price_ceiling_ratio) if s.price_ceiling_ratio else DEFAULT_LOG_MU[1] for s in segs])
    scale = float((ref_demand * ref_price).sum())
    prob = Problem(
        demand=dp, quality=f64(quality), mix_mask=f64(mix_mask), route_mask=f64(route),
        gpu_s_per_request=f64(gpu_s_t), batch_at_slo=f64(batch_t), tpot_ms=f64(tpot_t),
        usd_per_gpu_hour=f64(prices), capex_per_gpu=f64(capex), tp=f64(tp),
        is_batch=jnp.asarray([not i for i in interactive]), peak_to_mean=f64([s.peak_to_mean for s in segs]),
        served_latency_ms=f64(served_lat), gpu_cap=f64(caps),
        budget_usd_per_day=f64(fl.budget_usd_per_day if fl.budget_usd_per_day is not None else NO_CAP),
        capex_budget_usd=f64(fl.capex_budget_usd if fl.capex_budget_usd is not None else NO_CAP),
        min_quality=f64([s.min_quality or 0.0 for s in segs]), log_mu_lo=f64(lo), log_mu_hi=f64(hi),
        peak_utilization=f64(fl.peak_utilization), daily_utilization=f64(fl.daily_utilization),
        scale=f64(max(scale, 1e-9)))
    labels = Labels(segments=seg_names, models=models, precisions=tuple(fl.precisions), gpus=tuple(fl.gpus),
                    tiers=tuple(s.tier for s in segs), has_gpu_cap=tuple(hw.key in fl.gpu_caps for hw in hws),
                    has_budget=fl.budget_usd_per_day is not None, has_capex_budget=fl.capex_budget_usd is not None,
                    has_min_quality=tuple(s.min_quality is not None for s in segs),
                    isl=tuple(float(s.isl) for s in segs), osl=tuple(float(s.osl) for s in segs),
                    cached_share=tuple(float(s.cached_share) for s in segs),
                    cached_price_ratio=tuple(float(s.cached_price_ratio) for s in segs),
                    ref_input_usd_per_mtok=tuple(tuple(float(x) for x in row) for row in ref_in),
                    ref_output_usd_per_mtok=tuple(tuple(float(x) for x in row) for row in ref_out),
                    scenario=d.name)
    return prob, labels
