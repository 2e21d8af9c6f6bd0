"""Scenario config → the arrays of the margin problem (the one place this happens for `tokenmargin`).

Axes: ``S`` segments, ``J`` models (those offered to some segment), ``K`` precisions, ``G`` GPU types.
A *pool* is one (GPU type, model, precision) with a fixed tensor-parallel degree; every segment's
request on a pool costs a number of GPU-seconds computed by the cost kernels at that segment's
request shape and SLO (:func:`serving_table`).
"""

from __future__ import annotations

import math
import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kernels.demand import DemandParams, calibrate_logit
from kernels.roofline import Deployment, Efficiency
from kernels.serving import BISECTION_STEPS, Speculation, Workload, slo_point
from optimizer import catalog
from optimizer.errors import ConfigError
from optimizer.decision import request_prices
from optimizer.deployments import candidate_layouts
from optimizer.economics import block_share
from optimizer.profiles import segment_profiles
from optimizer.params import (EfficiencyTable, Layout, build_deployment, build_mtp, efficiency_at, efficiency_table,
                              gpu_rent, peak_tflops, stack_trees)
from optimizer.schema import PRECISION_KEYS, RunConfig
from optimizer.runtime import require_float64
from optimizer.validate import validate
from optimizer.windows import describe, window_share

NO_CAP = 1e30
"""Stand-in for an absent cap (kept finite so gradients and JSON stay clean)."""
NO_ON_DEMAND = 1e6
"""On-demand / reserved rent ratio standing for "no on-demand GPUs" (finite: ``κ · 0`` stays 0)."""


class Problem(NamedTuple):
    """All numbers of one scenario (a pytree of arrays; vmappable over scenarios)."""

    demand: DemandParams
    quality: jnp.ndarray  # (J, K) quality retention of model j at precision k
    mix_mask: jnp.ndarray  # (S, J, K) 1.0 where precision k may serve segment s on model j
    route_mask: jnp.ndarray  # (S, J, K, G) 1.0 where pool (g, j, k) can serve segment s within its SLO
    gpu_s_per_request: jnp.ndarray  # (S, J, K, G) GPU-seconds per request at the segment's SLO
    batch_at_slo: jnp.ndarray  # (S, J, K, G) concurrent sequences per replica at the SLO
    tpot_ms: jnp.ndarray  # (S, J, K, G) served TPOT, ms
    deployment: jnp.ndarray  # (S, J, K, G) index of the chosen candidate layout in Labels.pool_layouts (-1: none)
    prefill_share: jnp.ndarray  # (S, J, K, G) share of a request's GPU-seconds spent in prefill
    usd_per_gpu_hour: jnp.ndarray  # (G,)
    capex_per_gpu: jnp.ndarray  # (G,) USD (0 where unknown)
    tp: jnp.ndarray  # (G, J, K) GPUs per replica of the pool's largest chosen deployment (0 where unavailable)
    is_batch: jnp.ndarray  # (S,) bool
    peak_to_mean: jnp.ndarray  # (S,)
    profile: jnp.ndarray  # (S, T) load / mean of each segment in each period of the cycle (mean 1)
    window: jnp.ndarray  # (S, T) share of each period's load a segment block sends (1 unless the segment is split by the clock)
    on_demand_ratio: jnp.ndarray  # (G,) on-demand / reserved rent (≥ 1; NO_ON_DEMAND where none)
    idle_ratio: jnp.ndarray  # (G,) value of an idle reserved GPU-hour / reserved rent (in [0, 1))
    served_latency_ms: jnp.ndarray  # (S,) TPOT the segment is served at (its SLO, or its reference)
    gpu_cap: jnp.ndarray  # (G,) max GPUs (NO_CAP if none)
    on_demand_cap: jnp.ndarray  # (G, T) on-demand GPUs available per period (NO_CAP if none); (G, 0) when no type has a cap
    budget_usd_per_day: jnp.ndarray  # () (NO_CAP if none)
    capex_budget_usd: jnp.ndarray  # () (NO_CAP if none)
    min_quality: jnp.ndarray  # (S,) (0 if none)
    log_mu_lo: jnp.ndarray  # (R,) lower bound of log(price / reference price) of each product's prices
    log_mu_hi: jnp.ndarray  # (R,) upper bound
    log_band: jnp.ndarray  # (R,) log of each product's ratio band (cached / output prices vs input, against reference)
    tokens: jnp.ndarray  # (S, 3) million tokens per request billed as input, cached input, output
    flow_product: jnp.ndarray  # (S, J) int: the product segment s buys model j as (0 where not offered)
    sheet_ref: jnp.ndarray  # (R, 3) reference price sheet of each product, USD/Mtok (input, cached, output)
    sheet_tie: jnp.ndarray  # (R, 3) int: which price decision sets each price (ties unidentified ones)
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
    tiers: tuple[str, ...]  # (S,) tier of each segment's products
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
    pool_index: tuple[tuple[int, int, int], ...] = ()  # (P,) (gpu, model, precision) index of each pool
    pool_layouts: tuple[tuple[Layout, ...], ...] = ()  # (P, C_p) candidate layouts of each pool
    gpus_per_node: tuple[int, ...] = ()  # (G,) servers' GPUs, for node counts in reports
    products: tuple[str, ...] = ()  # (R,) product keys (a contract from an offer: "<segment>/<model>")
    product_model: tuple[int, ...] = ()  # (R,) model index
    product_tier: tuple[str, ...] = ()  # (R,)
    product_contract: tuple[int, ...] = ()  # (R,) the one segment of a contract, -1 for a shared product
    product_source: tuple[str, ...] = ()  # (R,)
    product_hours: tuple[str, ...] = ()  # (R,) hours of the day its sheet is valid ("" = all day)
    flow_product: tuple[tuple[int, ...], ...] = ()  # (S, J) product index (-1 where not offered)
    competitors: tuple[str, ...] = ()  # (C,)
    competitor_provider: tuple[str, ...] = ()  # (C,)
    competitor_model: tuple[str, ...] = ()  # (C,)
    competitor_tier: tuple[str, ...] = ()  # (C,)
    competitor_sheet: tuple[tuple[float, float, float], ...] = ()  # (C,) list prices USD/Mtok
    competitor_date: tuple[str, ...] = ()  # (C,)
    competitor_ratios: tuple[tuple[float, float, float], ...] = ()  # (C,) what-if price / list price
    tier_terms: tuple[tuple[str, float, float, bool], ...] = ()  # (T,) (tier, tpot ms, ttft ms, deferrable)

    time_varying: bool = False  # some segment's load varies over the periods (an hourly profile)
    segment_parent: tuple[str, ...] = ()  # (S,) configured segment of each block (= segments unless split by the clock)
    segment_hours: tuple[str, ...] = ()  # (S,) hours of the day of each block ("" = all day)

    @property
    def has_shared_products(self) -> bool:
        """Whether some product's price sheet is paid by more than one segment."""
        return any(c < 0 for c in self.product_contract)

    def layout_at(self, g: int, j: int, k: int, c: float) -> Layout | None:
        """The candidate layout ``c`` of pool (gpu g, model j, precision k), or None."""
        if c < 0 or (g, j, k) not in self.pool_index:
            return None
        return self.pool_layouts[self.pool_index.index((g, j, k))][int(c)]


DEFAULT_LOG_MU = (math.log(0.02), math.log(50.0))
"""Price search range when no floor/ceiling is given: 1/50 to 50x the reference price."""
PRICE_BOUND_TOL = 1e-4
"""|log(price / bound)| below which a price counts as at its search bound (flagged in plans and sweep rows)."""


class ServingTable(NamedTuple):
    """Each segment's best deployment on each pool at its shape and SLO (leading axes (S, P))."""

    gpu_s: jnp.ndarray  # (S, P) GPU-seconds per request (prefill + decode pools)
    feasible: jnp.ndarray  # (S, P) bool: some candidate fits and meets the SLO
    batch: jnp.ndarray  # (S, P) sequences per decode replica at the SLO
    tpot_s: jnp.ndarray  # (S, P) served TPOT, s
    choice: jnp.ndarray  # (S, P) index of the chosen candidate (float; 0 when infeasible)
    replica_gpus: jnp.ndarray  # (S, P) GPUs per (decode) replica of the chosen candidate
    prefill_share: jnp.ndarray  # (S, P) prefill GPU-s / total GPU-s per request


def candidate_table(deps: Deployment, effs: Efficiency, specs: Speculation, disagg: jnp.ndarray,
                    valid: jnp.ndarray, wls: Workload, tpot_s: jnp.ndarray, ttft_s: jnp.ndarray,
                    bisection_steps: int = BISECTION_STEPS):
    """Every (segment, pool, candidate) at the segment's SLO: ``(gpu_s, ok, batch, tpot_s, prefill_gpu_s)``,
    each (S, P, C); ``ok`` is False for padding, misfits and SLO misses.

    Candidates are shared by every segment (``valid`` of shape (P, C)) or given per segment
    (``valid`` (S, P, C), as :func:`prune_candidates` leaves them for sweeps)."""
    # the kernels are elementwise: segments (S, 1, 1) × pools (P, 1) × candidates (P, C) broadcast to
    # (S, P, C) in one trace (three nested vmaps trace every operation through three batching rules)
    seg = lambda x: jnp.asarray(x)[:, None, None]  # noqa: E731
    eff = jax.tree.map(lambda x: jnp.asarray(x)[:, None], effs)
    p, ok = slo_point(deps, eff, jax.tree.map(seg, wls), seg(tpot_s), seg(ttft_s), specs, steps=bisection_steps,
                      disaggregated=disagg)
    shape = np.broadcast_shapes(np.shape(tpot_s) + (1, 1), np.shape(valid))
    gpu_s, ok, b, tpot, pre = (jnp.broadcast_to(x, shape) for x in
                               (p.gpu_s_per_request, ok & p.fits, p.batch, p.tpot_s, p.gpu_s_prefill))
    return gpu_s, ok & valid & jnp.isfinite(gpu_s), b, tpot, pre


def serving_table(deps: Deployment, effs: Efficiency, specs: Speculation, disagg: jnp.ndarray,
                  valid: jnp.ndarray, wls: Workload, tpot_s: jnp.ndarray, ttft_s: jnp.ndarray,
                  bisection_steps: int = BISECTION_STEPS) -> ServingTable:
    """Best candidate deployment of every (segment, pool) at the segment's SLO: fewest GPU-s per request.

    Args:
      deps, specs, disagg, valid: stacked over (pool P, candidate C); ``valid`` masks the padding.
      effs: stacked over pools (P). wls, tpot_s, ttft_s: stacked over segments (S).
      bisection_steps: static precision of the SLO batch (:func:`kernels.serving.slo_point`).

    Returns:
      :class:`ServingTable`. Pure and jittable; the choice is an exact argmin (piecewise
      differentiable: gradients flow through the chosen candidate).
    """
    gpu_s, ok, b, tpot, pre = candidate_table(deps, effs, specs, disagg, valid, wls, tpot_s, ttft_s, bisection_steps)
    score = jnp.where(ok, gpu_s, jnp.inf)
    c = jnp.argmin(score, axis=-1)
    take = lambda x: jnp.take_along_axis(x, c[..., None], axis=-1)[..., 0]  # noqa: E731
    g = take(gpu_s)
    gpus = jnp.broadcast_to(deps.gpus, ok.shape)  # (P, C) or (S, P, C)
    return ServingTable(gpu_s=g, feasible=ok.any(-1), batch=take(b), tpot_s=take(tpot),
                        choice=c.astype(gpu_s.dtype), replica_gpus=take(gpus),
                        prefill_share=take(pre) / jnp.maximum(g, 1e-30))


class Numbers(NamedTuple):
    """Every numeric input of a scenario (a pytree; stack it to sweep thousands of what-ifs).

    Sweep axes (``optimizer.sweep``) address these leaves by their config paths.
    """

    volume: jnp.ndarray  # (S,) reference input tokens per day
    isl: jnp.ndarray  # (S,)
    osl: jnp.ndarray  # (S,)
    cached_share: jnp.ndarray  # (S,)
    cached_price_ratio: jnp.ndarray  # (S,)
    elasticity: jnp.ndarray  # (S,)
    ref_market_share: jnp.ndarray  # (S,)
    quality_sensitivity: jnp.ndarray  # (S,)
    latency_sensitivity: jnp.ndarray  # (S,)
    tpot_ms: jnp.ndarray  # (S,) inf = no SLO
    ttft_ms: jnp.ndarray  # (S,) inf = no SLO
    ref_tpot_ms: jnp.ndarray  # (S,)
    peak_to_mean: jnp.ndarray  # (S,)
    profile: jnp.ndarray  # (S, T) load / mean per period (of the configured segment a block belongs to)
    window: jnp.ndarray  # (S, T) share of each period's load in the block (1: the whole segment, all day)
    min_quality: jnp.ndarray  # (S,) 0 = none
    nest_parameter: jnp.ndarray  # (S,)
    competitor_share: jnp.ndarray  # (S, C) 0 where the segment does not consider the competitor
    product_input: jnp.ndarray  # (R,) reference USD/Mtok
    product_cached: jnp.ndarray  # (R,) reference cache-hit USD/Mtok (contracts: input × segment's cached_price_ratio)
    product_output: jnp.ndarray  # (R,)
    product_floor: jnp.ndarray  # (R,) price floor / reference
    product_ceiling: jnp.ndarray  # (R,) price ceiling / reference
    product_band: jnp.ndarray  # (R,) ratio band of the cached and output prices against the input price
    competitor_input: jnp.ndarray  # (C,) list USD/Mtok
    competitor_cached: jnp.ndarray  # (C,)
    competitor_output: jnp.ndarray  # (C,)
    competitor_input_ratio: jnp.ndarray  # (C,) what-if price / list price
    competitor_cached_ratio: jnp.ndarray  # (C,)
    competitor_output_ratio: jnp.ndarray  # (C,)
    tier_tpot_ms: jnp.ndarray  # (T,) inf = the segment's own SLO
    tier_ttft_ms: jnp.ndarray  # (T,)
    volume_share: jnp.ndarray  # (S, J)
    usd_per_gpu_hour: jnp.ndarray  # (G,) reserved rent (paid in every period)
    on_demand_usd_per_gpu_hour: jnp.ndarray  # (G,) paid per hour used (NO_CAP where none)
    idle_value_usd_per_gpu_hour: jnp.ndarray  # (G,) value of an idle reserved GPU-hour
    capex_per_gpu: jnp.ndarray  # (G,)
    gpu_cap: jnp.ndarray  # (G,)
    on_demand_cap: jnp.ndarray  # (G,) on-demand GPUs available in a period (NO_CAP if none)
    on_demand_cap_profile: jnp.ndarray  # (T,) share of the cap available in each period; (0,) when no type has a cap
    budget_usd_per_day: jnp.ndarray  # ()
    capex_budget_usd: jnp.ndarray  # ()
    peak_utilization: jnp.ndarray  # ()
    daily_utilization: jnp.ndarray  # ()
    quality: jnp.ndarray  # (J, K) retention of model j at precision k
    bw_eff: jnp.ndarray  # (F,) per GPU family (GPU_FAMILIES order)
    flops_eff: jnp.ndarray  # (F,)
    prefill_flops_eff: jnp.ndarray  # (F,)
    moe_eff: jnp.ndarray  # ()
    step_overhead_ms: jnp.ndarray  # ()
    mem_util: jnp.ndarray  # ()
    layer_overhead_us: jnp.ndarray  # ()
    moe_layer_overhead_us: jnp.ndarray  # ()
    collective_latency_us: jnp.ndarray  # ()
    ep_imbalance: jnp.ndarray  # ()


class Pools(NamedTuple):
    """The fixed structure of a scenario's pools (GPU × model × precision) and their candidate deployments."""

    dep: Deployment  # stacked over (pool P, candidate C); padding repeats candidate 0
    spec: Speculation  # (P, C) speculative decoding of each candidate
    disagg: jnp.ndarray  # (P, C) 1.0 where the candidate is prefill/decode disaggregated
    valid: jnp.ndarray  # (P, C) bool: a real candidate (not padding)
    gpu: jnp.ndarray  # (P,) int GPU index
    model: jnp.ndarray  # (P,) int model index
    precision: jnp.ndarray  # (P,) int precision index
    family: jnp.ndarray  # (P,) int GPU-family index
    offer_mask: jnp.ndarray  # (S, J)
    is_logit: jnp.ndarray  # (S,) bool
    is_batch: jnp.ndarray  # (S,) bool
    tp: jnp.ndarray  # (G, J, K) 1.0 where the pool has a candidate (availability)
    segment_tier: jnp.ndarray  # (S,) int tier index
    flow_product: jnp.ndarray  # (S, J) int product index (0 where not offered)
    contract_segment: jnp.ndarray  # (R,) int: the segment of a contract, -1 for a shared product
    sheet_tie: jnp.ndarray  # (R, 3) int: which price decision sets each price
    competitor_mask: jnp.ndarray  # (S, C)


def _validate_fleet(fl) -> None:
    """Fleet rules the field table cannot express: catalog keys and maps naming fleet GPUs."""
    for k in fl.precisions:
        if k not in PRECISION_KEYS:
            raise ConfigError(f"fleet.precisions contains '{k}'; accepted: {list(PRECISION_KEYS)}")
    if not fl.gpus:
        raise ConfigError("fleet.gpus is empty; list at least one GPU key, e.g. [h100-sxm, h200-sxm, b200]")
    for name in ("gpu_caps", "price_usd_per_gpu_hour", "on_demand_usd_per_gpu_hour", "on_demand_cap"):
        for g, v in getattr(fl, name).items():
            if v is not None and g not in fl.gpus:
                raise ConfigError(f"fleet.{name}.{g} = {v} names GPU '{g}', which is not in fleet.gpus "
                                  f"{list(fl.gpus)}; add it there or set fleet.{name}.{g}=null")


def _canonical_offers(name: str, seg) -> dict:
    """A segment's offers keyed by catalog model keys (an old dotted key is mapped, with a warning)."""
    out = {}
    for m, o in seg.offers.items():
        key = catalog.canonical_model(m, where=f"demand.segments.{name}.offers")
        if key in out:
            raise ConfigError(f"demand.segments.{name}.offers names model '{key}' twice ('{m}' is an alias of "
                              f"'{key}'); keep one of them")
        out[key] = o
    return out


class Products(NamedTuple):
    """Our products and how segments buy them (host-side, from the config)."""

    keys: list  # (R,) product keys
    model: list  # (R,) model key
    tier: list  # (R,) tier key
    contract: list  # (R,) segment index of a contract, -1 for a shared product
    configs: list  # (R,) ProductConfig, or (OfferConfig, SegmentConfig) of a contract
    buys: list  # (S,) {model key: (product index, volume share)}
    segment_tier: list  # (S,) tier key


TIE_PATTERNS = {3: ((0, 1, 2),), 2: ((0, 0, 2), (0, 1, 1), (0, 1, 0)), 1: ((0, 0, 0),)}
"""Which price decision sets (input, cached input, output), by the rank of the buyers' token mixes."""


def sheet_tie(tokens: np.ndarray) -> tuple[int, int, int]:
    """The tie pattern of a product whose buyers pay ``tokens`` (n, 3) USD per request at its
    reference sheet (token mix × reference price of each kind): as many free prices as
    the mixes identify (one segment: one multiplier on the whole reference sheet; two segments with
    different input/output ratios: input and output apart, cached input with input; ...)."""
    a = np.asarray(tokens, float)
    a = a / np.maximum(np.abs(a).max(0, keepdims=True), 1e-300)
    rank = int(np.linalg.matrix_rank(a, tol=1e-9)) if a.size else 1
    for pattern in TIE_PATTERNS[max(rank, 1)]:
        merged = np.zeros((len(a), 3))  # revenue per request by free price decision
        for col, lead in enumerate(pattern):
            merged[:, lead] += a[:, col]
        if np.linalg.matrix_rank(merged, tol=1e-9) == rank:
            return pattern
    return (0, 0, 0)


def _products(cfg: RunConfig, seg_names, segs, offers) -> Products:
    """Resolve products, contracts (a segment's offers) and tiers; raise on an inconsistent config."""
    d = cfg.demand
    keys, model, tier, contract, configs = [], [], [], [], []
    used = {p for s in segs for p in s.products}
    for p in used - set(d.products):
        where = [n for n, s in zip(seg_names, segs) if p in s.products]
        raise ConfigError(f"demand.segments.{where[0]}.products names product '{p}', which is not in demand.products "
                          f"(available: {', '.join(d.products) or 'none'})")
    for key, pc in d.products.items():
        if key not in used:
            continue
        if pc.tier not in d.tiers:
            raise ConfigError(f"demand.products.{key}.tier = '{pc.tier}': accepted one of {list(d.tiers)} "
                              f"(demand.tiers)")
        keys.append(key)
        model.append(catalog.canonical_model(pc.model, where=f"demand.products.{key}.model"))
        tier.append(pc.tier)
        contract.append(-1)
        configs.append(pc)
    buys, segment_tier = [], []
    for si, (name, seg, seg_offers) in enumerate(zip(seg_names, segs, offers)):
        mine = {}
        contract_tier = "standard" if seg.tier == "interactive" else "batch"
        for m, o in seg_offers.items():
            if contract_tier not in d.tiers:
                raise ConfigError(f"demand.segments.{name}.offers need tier '{contract_tier}' in demand.tiers")
            mine[m] = (len(keys), o.volume_share)
            keys.append(f"{name}/{m}")
            model.append(m)
            tier.append(contract_tier)
            contract.append(si)
            configs.append((o, seg))
        for p, share in seg.products.items():
            r = keys.index(p)
            if model[r] in mine:
                other = keys[mine[model[r]][0]]
                raise ConfigError(f"demand.segments.{name} buys model '{model[r]}' twice (as '{other}' and '{p}'); "
                                  f"a segment buys each model as one product: keep one")
            mine[model[r]] = (r, share)
        tiers_of = {tier[r] for r, _ in mine.values()}
        if len(tiers_of) > 1:
            raise ConfigError(f"demand.segments.{name} buys products of tiers {sorted(tiers_of)}; a segment buys in "
                              f"one tier (split it into one segment per tier)")
        if not mine:
            raise ConfigError(f"demand.segments.{name} buys nothing: give it products (keys of demand.products) or offers")
        for bound in ("price_floor_ratio", "price_ceiling_ratio"):
            if getattr(seg, bound) is not None and not seg_offers:
                raise ConfigError(f"demand.segments.{name}.{bound} = {getattr(seg, bound):g} bounds the prices of the "
                                  f"segment's offers (contracts), and it has none; bound its products' sheets "
                                  f"instead: demand.products.<product>.{bound} "
                                  f"(its products: {', '.join(seg.products)})")
        for c in seg.competitors:
            if c not in d.competitors:
                raise ConfigError(f"demand.segments.{name}.competitors names '{c}', which is not in demand.competitors "
                                  f"(available: {', '.join(d.competitors) or 'none'})")
        if seg.competitors and seg.demand != "logit":
            raise ConfigError(f"demand.segments.{name}.competitors needs demand=logit (constant elasticity has no "
                              f"choice between providers); got demand={seg.demand}")
        if seg.demand == "logit" and not seg.ref_market_share + sum(seg.competitors.values()) < 1.0:
            raise ConfigError(f"demand.segments.{name}: ref_market_share {seg.ref_market_share:g} + competitors' "
                              f"shares {sum(seg.competitors.values()):g} must be below 1 (the rest does not buy)")
        buys.append(mine)
        segment_tier.append(tiers_of.pop())
    return Products(keys, model, tier, contract, configs, buys, segment_tier)


class Blocks(NamedTuple):
    """The segments as the model sees them: each configured segment, or, where it buys a product
    that has an off-peak sheet, its two blocks of the day (host-side, from the config)."""

    names: tuple  # (S,) "<segment>", or "<segment>@peak" / "<segment>@off-peak"
    parents: tuple  # (S,) the configured segment of each block
    configs: list  # (S,) SegmentConfig (an off-peak block buys the off-peak products)
    window: np.ndarray  # (S, T) share of each period's load in the block
    hours: tuple  # (S,) the block's hours of the day ("" = all day)
    variants: dict  # {all-day product: its off-peak product}


def _off_peak_products(cfg: RunConfig) -> dict[str, str]:
    """{all-day product: its off-peak product}; raise on an inconsistent off-peak product."""
    d = cfg.demand
    variants: dict[str, str] = {}
    for key, pc in d.products.items():
        where = f"demand.products.{key}"
        if pc.off_peak_of is None:
            if pc.hours:
                raise ConfigError(f"{where}.hours = {list(pc.hours)} needs {where}.off_peak_of: the all-day product "
                                  f"whose sheet this one replaces in those hours")
            continue
        base = d.products.get(pc.off_peak_of)
        if base is None:
            raise ConfigError(f"{where}.off_peak_of = '{pc.off_peak_of}' is not in demand.products "
                              f"(available: {', '.join(k for k in d.products if k != key)})")
        if base.off_peak_of is not None:
            raise ConfigError(f"{where}.off_peak_of = '{pc.off_peak_of}' is itself an off-peak product; accepted "
                              f"an all-day product (one without off_peak_of)")
        if catalog.canonical_model(pc.model, where=f"{where}.model") != catalog.canonical_model(base.model,
                                                                                                where=f"{where}.model"):
            raise ConfigError(f"{where}.model = '{pc.model}' differs from the model of '{pc.off_peak_of}' "
                              f"('{base.model}'); an off-peak product sells the same model")
        if pc.tier != base.tier:
            raise ConfigError(f"{where}.tier = '{pc.tier}' differs from the tier of '{pc.off_peak_of}' "
                              f"('{base.tier}'); an off-peak product has its all-day product's service terms")
        if pc.tier in d.tiers and d.tiers[pc.tier].deferrable:
            raise ConfigError(f"{where}.tier = '{pc.tier}' is deferrable (served whenever there is room), so it has "
                              f"no clock; accepted an off-peak product of a tier with a latency SLO")
        if pc.off_peak_of in variants:
            raise ConfigError(f"{where} and demand.products.{variants[pc.off_peak_of]} are both off-peak products "
                              f"of '{pc.off_peak_of}'; keep one (it may have several windows in hours)")
        variants[pc.off_peak_of] = key
        for name, seg in d.segments.items():
            if key in seg.products:
                raise ConfigError(f"demand.segments.{name}.products names the off-peak product '{key}'; a segment "
                                  f"buys it through its all-day product '{pc.off_peak_of}' (list that one)")
    return variants


def _blocks(cfg: RunConfig, seg_names: tuple, segs: list, profiles: np.ndarray) -> Blocks:
    """Split each segment that buys an all-day product with an off-peak product into its peak and
    off-peak blocks: the same customers, independent demand in each block (ASSUMPTION: nobody moves
    a request to the other block's hours), calibrated to the block's share of the reference volume."""
    d, tc = cfg.demand, cfg.time
    variants = _off_peak_products(cfg)
    names, parents, configs, window, hours = [], [], [], [], []
    whole_day = np.ones(tc.periods)
    for name, seg, prof in zip(seg_names, segs, profiles):
        timed = {p: variants[p] for p in seg.products if p in variants}
        if not timed:
            names.append(name), parents.append(name), configs.append(seg), window.append(whole_day), hours.append("")
            continue
        where = f"demand.segments.{name}"
        if seg.offers:
            raise ConfigError(f"{where} has offers (contracts) and buys '{next(iter(timed))}', which has an off-peak "
                              f"product; a contract has one price all day: give the segment products only, or "
                              f"drop the off-peak product")
        spans = {tuple(sorted(d.products[v].hours)) for v in timed.values()}
        if len(spans) > 1:
            raise ConfigError(f"{where} buys off-peak products with different hours "
                              f"({'; '.join(f'{v}: {list(d.products[v].hours)}' for v in timed.values())}); "
                              f"accepted off-peak products of one segment sharing their hours")
        v = next(iter(timed.values()))
        share = window_share(list(d.products[v].hours), tc.periods, tc.hours_per_period, f"demand.products.{v}.hours")
        load = float(np.mean(prof * share))
        if not 1e-9 < load < 1.0 - 1e-9 or not share.max() > 0 or not share.min() < 1:
            raise ConfigError(f"demand.products.{v}.hours = {list(d.products[v].hours)} leaves segment '{name}' "
                              f"{'no' if load <= 1e-9 else 'all its'} load in those hours (its profile "
                              f"'{seg.profile}'); accepted hours covering part of its day")
        text = describe(list(d.products[v].hours))
        off = dataclasses.replace(seg, products={timed.get(p, p): x for p, x in seg.products.items()})
        for block, cfg_b, w, h in (("peak", seg, 1.0 - share, f"outside {text}"), ("off-peak", off, share, text)):
            names.append(f"{name}@{block}"), parents.append(name), configs.append(cfg_b), window.append(w)
            hours.append(h)
    return Blocks(tuple(names), tuple(parents), configs, np.stack(window), tuple(hours), variants)


def _product_hours(d, keys: list, variants: dict) -> tuple:
    """(R,) when each product's sheet is valid: its off-peak hours, "outside" them for the all-day
    product it replaces there, "" (all day) otherwise."""
    base_of = {v: b for b, v in variants.items()}
    out = []
    for key in keys:
        if key in base_of:
            out.append(describe(list(d.products[key].hours)))
        elif key in variants and variants[key] in keys:
            out.append(f"outside {describe(list(d.products[variants[key]].hours))}")
        else:
            out.append("")
    return tuple(out)


def _product_prices(pc, default_lo: float, default_hi: float) -> tuple[float, float, float, float, float]:
    """(input, cached, output, floor ratio, ceiling ratio) of a product or a contract (cached: see Numbers)."""
    if isinstance(pc, tuple):
        o, seg = pc
        lo, hi = seg.price_floor_ratio, seg.price_ceiling_ratio
        inp, cached, out = o.input_usd_per_mtok, 0.0, o.output_usd_per_mtok
    else:
        lo, hi = pc.price_floor_ratio, pc.price_ceiling_ratio
        inp, out = pc.input_usd_per_mtok, pc.output_usd_per_mtok
        cached = 0.1 * inp if pc.cached_input_usd_per_mtok is None else pc.cached_input_usd_per_mtok
    return inp, cached, out, default_lo if lo is None else lo, default_hi if hi is None else hi


def scenario_inputs(cfg: RunConfig) -> tuple[Numbers, Pools, Labels]:
    """Validate a scenario and split it into numbers (sweepable), pool structure and labels."""
    from optimizer.schema import GPU_FAMILIES

    require_float64("tokenmargin")
    validate(cfg)  # every field against its accepted values (a no-op for configs from to_schema)
    d, fl = cfg.demand, cfg.fleet
    _validate_fleet(fl)
    periods = cfg.time.periods
    profiles = segment_profiles([d.segments[n].profile for n in d.segments], list(d.segments), periods,
                                periods * cfg.time.hours_per_period)
    blocks = _blocks(cfg, tuple(d.segments), [d.segments[n] for n in d.segments], profiles)
    seg_names, segs = blocks.names, blocks.configs
    profiles = profiles[[list(d.segments).index(p) for p in blocks.parents]]
    offers = [_canonical_offers(n, s) for n, s in zip(seg_names, segs)]  # old (dotted) model keys -> catalog keys
    prods = _products(cfg, seg_names, segs, offers)
    models = tuple(dict.fromkeys(m for b in prods.buys for m in b))
    hws = [catalog.load_hardware(g) for g in fl.gpus]
    mcs = [catalog.load_model(m) for m in models]
    precs = [catalog.load_precision(k) for k in fl.precisions]
    S, J, K, G = len(segs), len(models), len(precs), len(hws)
    for s, seg, seg_buys in zip(seg_names, segs, prods.buys):
        for m in seg_buys:
            mc = mcs[models.index(m)]
            if seg.isl + seg.osl > mc.max_context:
                raise ConfigError(f"demand.segments.{s}: isl + osl = {seg.isl + seg.osl:g} exceeds model '{m}' "
                                  f"max_context {mc.max_context}")
    max_ctx = max(s.isl + s.osl for s in segs)
    cands, idx = [], []
    tp = np.zeros((G, J, K))
    for gi, hw in enumerate(hws):
        for ji, mc in enumerate(mcs):
            for ki, pc in enumerate(precs):
                if peak_tflops(hw, pc.compute) is None:
                    continue
                lays = candidate_layouts(hw, mc, pc, cfg.efficiency.mem_util, max_ctx,
                                         disaggregation=fl.disaggregation, speculation=fl.speculation)
                lays = [lay for lay in lays if lay.gpus <= fl.max_replica_gpus]
                if not lays:
                    continue
                tp[gi, ji, ki] = 1.0
                cands.append(tuple(lays))
                idx.append((gi, ji, ki, GPU_FAMILIES.index(hw.family)))
    for ji, m in enumerate(models):
        if not tp[:, ji, :].any():
            raise ConfigError(f"model '{m}' fits none of the fleet's GPUs {list(fl.gpus)} at precisions "
                              f"{list(fl.precisions)} in any deployment of up to {fl.max_replica_gpus} GPUs "
                              f"(fleet.max_replica_gpus); add a larger GPU or a lower precision")
    n_cand = max(len(c) for c in cands)
    dep_rows, spec_rows, dis_rows, valid_rows = [], [], [], []
    for (gi, ji, ki, _), lays in zip(idx, cands):
        hw, mc, pc = hws[gi], mcs[ji], precs[ki]
        pad = [0] * (n_cand - len(lays))  # padding repeats candidate 0
        deps = [build_deployment(hw, mc, pc, lay, None) for lay in lays]
        specs = [build_mtp(mc, lay.spec_k, None) for lay in lays]
        dep_rows.append(stack_trees(deps + [deps[i] for i in pad], np))
        spec_rows.append(stack_trees(specs + [specs[i] for i in pad], np))
        dis_rows.append([float(lay.disaggregated) for lay in list(lays) + [lays[i] for i in pad]])
        valid_rows.append([c < len(lays) for c in range(n_cand)])
    R = len(prods.keys)
    offer, share = np.zeros((S, J)), np.zeros((S, J))
    flow = np.full((S, J), -1)
    for si, seg_buys in enumerate(prods.buys):
        for m, (r, v) in seg_buys.items():
            ji = models.index(m)
            offer[si, ji], share[si, ji], flow[si, ji] = 1.0, v, r
    sheets = np.asarray([_product_prices(c, math.exp(DEFAULT_LOG_MU[0]), math.exp(DEFAULT_LOG_MU[1]))
                         for c in prods.configs], float).reshape(R, 5)
    for r, key in enumerate(prods.keys):
        if not sheets[r, 3] < sheets[r, 4]:
            raise ConfigError(f"product '{key}': price_floor_ratio {sheets[r, 3]:g} must be below "
                              f"price_ceiling_ratio {sheets[r, 4]:g}")
    tok = np.asarray([[s.isl * (1 - s.cached_share), s.isl * s.cached_share, s.osl] for s in segs], float)
    ties = np.asarray([sheet_tie(tok[[si for si in range(S) if (flow[si] == r).any()]] * sheets[r, :3])
                       for r in range(R)], int).reshape(R, 3)
    tier_keys = tuple(d.tiers)
    seg_tier = np.asarray([tier_keys.index(t) for t in prods.segment_tier], int)
    comp_keys = tuple(d.competitors)
    comps = [d.competitors[c] for c in comp_keys]
    comp_share = np.zeros((S, len(comps)))
    for si, seg in enumerate(segs):
        for c, v in seg.competitors.items():
            comp_share[si, comp_keys.index(c)] = v
    idx_a = np.asarray(idx, int)
    pools = Pools(dep=jax.tree.map(f64, stack_trees(dep_rows, np)),
                  spec=jax.tree.map(f64, stack_trees(spec_rows, np)), disagg=f64(dis_rows),
                  valid=np.asarray(valid_rows), gpu=idx_a[:, 0], model=idx_a[:, 1],
                  precision=idx_a[:, 2], family=idx_a[:, 3], offer_mask=f64(offer),
                  is_logit=np.asarray([s.demand == "logit" for s in segs]),
                  is_batch=np.asarray([d.tiers[t].deferrable for t in prods.segment_tier]), tp=f64(tp),
                  segment_tier=seg_tier, flow_product=np.maximum(flow, 0), contract_segment=np.asarray(prods.contract, int),
                  sheet_tie=ties, competitor_mask=f64(comp_share > 0))
    if fl.capex_budget_usd is not None and any(not hw.capex_usd_per_gpu for hw in hws):
        missing = [hw.key for hw in hws if not hw.capex_usd_per_gpu]
        raise ConfigError(f"fleet.capex_budget_usd needs a capex for every GPU; missing for {missing}")
    eff = cfg.efficiency
    eff_table = efficiency_table(eff, np.float64, np)
    rents, on_demand = _rents(fl, hws)
    inf = float("inf")
    opt = lambda v, default: default if v is None else v  # noqa: E731
    numbers = Numbers(
        volume=f64([s.input_tokens_per_day for s in segs]), isl=f64([s.isl for s in segs]),
        osl=f64([s.osl for s in segs]), cached_share=f64([s.cached_share for s in segs]),
        cached_price_ratio=f64([s.cached_price_ratio for s in segs]), elasticity=f64([s.elasticity for s in segs]),
        ref_market_share=f64([s.ref_market_share for s in segs]),
        quality_sensitivity=f64([s.quality_sensitivity for s in segs]),
        latency_sensitivity=f64([s.latency_sensitivity for s in segs]),
        tpot_ms=f64([opt(s.tpot_ms, inf) for s in segs]), ttft_ms=f64([opt(s.ttft_ms, inf) for s in segs]),
        ref_tpot_ms=f64([opt(s.ref_tpot_ms, opt(s.tpot_ms, 0.0)) for s in segs]),
        peak_to_mean=f64([s.peak_to_mean for s in segs]),
        profile=f64(profiles), window=f64(blocks.window),
        min_quality=f64([opt(s.min_quality, 0.0) for s in segs]),
        nest_parameter=f64([s.nest_parameter for s in segs]), competitor_share=f64(comp_share),
        product_input=f64(sheets[:, 0]), product_cached=f64(sheets[:, 1]), product_output=f64(sheets[:, 2]),
        product_floor=f64(sheets[:, 3]), product_ceiling=f64(sheets[:, 4]),
        product_band=f64([c.price_ratio_band if not isinstance(c, tuple) else 1.0 for c in prods.configs]),
        competitor_input=f64([c.input_usd_per_mtok for c in comps]),
        competitor_cached=f64([opt(c.cached_input_usd_per_mtok, c.input_usd_per_mtok) for c in comps]),
        competitor_output=f64([c.output_usd_per_mtok for c in comps]),
        competitor_input_ratio=f64([c.input_price_ratio for c in comps]),
        competitor_cached_ratio=f64([c.cached_input_price_ratio for c in comps]),
        competitor_output_ratio=f64([c.output_price_ratio for c in comps]),
        tier_tpot_ms=f64([opt(d.tiers[t].tpot_ms, inf) for t in tier_keys]),
        tier_ttft_ms=f64([opt(d.tiers[t].ttft_ms, inf) for t in tier_keys]),
        volume_share=f64(share),
        usd_per_gpu_hour=f64(rents),
        on_demand_usd_per_gpu_hour=f64(on_demand),
        idle_value_usd_per_gpu_hour=f64([fl.idle_value_usd_per_gpu_hour] * len(hws)),
        capex_per_gpu=f64([hw.capex_usd_per_gpu or 0.0 for hw in hws]),
        gpu_cap=f64([opt(fl.gpu_caps.get(hw.key), NO_CAP) for hw in hws]),
        on_demand_cap=f64([opt(fl.on_demand_cap.get(hw.key), NO_CAP) for hw in hws]),
        on_demand_cap_profile=f64(_on_demand_cap_profile(fl, hws, cfg.time.periods)),
        budget_usd_per_day=f64(opt(fl.budget_usd_per_day, NO_CAP)), capex_budget_usd=f64(opt(fl.capex_budget_usd, NO_CAP)),
        peak_utilization=f64(fl.peak_utilization), daily_utilization=f64(fl.daily_utilization),
        quality=f64([[getattr(mc.quality, pc.key) for pc in precs] for mc in mcs]),
        bw_eff=eff_table.bw_eff, flops_eff=eff_table.flops_eff, prefill_flops_eff=eff_table.prefill_flops_eff,
        moe_eff=eff_table.moe_eff, step_overhead_ms=f64(eff.step_overhead_ms), mem_util=eff_table.mem_util,
        layer_overhead_us=f64(eff.layer_overhead_us), moe_layer_overhead_us=f64(eff.moe_layer_overhead_us),
        collective_latency_us=f64(eff.collective_latency_us),
        ep_imbalance=f64(eff.ep_imbalance))
    labels = Labels(time_varying=bool(np.ptp(profiles * blocks.window, axis=-1).max(initial=0.0) > 1e-12),
                    segment_parent=blocks.parents, segment_hours=blocks.hours,
                    product_hours=_product_hours(d, prods.keys, blocks.variants),
                    segments=seg_names, models=models, precisions=tuple(fl.precisions), gpus=tuple(fl.gpus),
                    tiers=tuple(prods.segment_tier), has_gpu_cap=tuple(fl.gpu_caps.get(hw.key) is not None for hw in hws),
                    has_budget=fl.budget_usd_per_day is not None, has_capex_budget=fl.capex_budget_usd is not None,
                    has_min_quality=tuple(s.min_quality is not None for s in segs),
                    isl=tuple(float(s.isl) for s in segs), osl=tuple(float(s.osl) for s in segs),
                    cached_share=tuple(float(s.cached_share) for s in segs),
                    cached_price_ratio=tuple(float(s.cached_price_ratio) for s in segs),
                    ref_input_usd_per_mtok=tuple(tuple(float(sheets[r, 0]) if r >= 0 else 0.0 for r in row) for row in flow),
                    ref_output_usd_per_mtok=tuple(tuple(float(sheets[r, 2]) if r >= 0 else 0.0 for r in row) for row in flow),
                    scenario=d.name, pool_index=tuple((i[0], i[1], i[2]) for i in idx), pool_layouts=tuple(cands),
                    gpus_per_node=tuple(int(hw.gpus_per_node) for hw in hws),
                    products=tuple(prods.keys), product_model=tuple(models.index(m) for m in prods.model),
                    product_tier=tuple(prods.tier), product_contract=tuple(prods.contract),
                    product_source=tuple(c[0].price_source if isinstance(c, tuple) else c.price_source
                                         for c in prods.configs),
                    flow_product=tuple(tuple(int(x) for x in row) for row in flow),
                    competitors=comp_keys, competitor_provider=tuple(c.provider for c in comps),
                    competitor_model=tuple(c.model for c in comps), competitor_tier=tuple(c.tier for c in comps),
                    competitor_sheet=tuple((c.input_usd_per_mtok, opt(c.cached_input_usd_per_mtok, c.input_usd_per_mtok),
                                            c.output_usd_per_mtok) for c in comps),
                    competitor_date=tuple(c.date for c in comps),
                    competitor_ratios=tuple((c.input_price_ratio, c.cached_input_price_ratio, c.output_price_ratio)
                                            for c in comps),
                    tier_terms=tuple((t, opt(d.tiers[t].tpot_ms, inf), opt(d.tiers[t].ttft_ms, inf),
                                      bool(d.tiers[t].deferrable)) for t in tier_keys))
    # on the device in one transfer (no eager JAX operation to compile); safe to close over in jit too
    return jax.device_put(numbers), jax.device_put(pools), labels


def f64(x) -> np.ndarray:
    """A float64 NumPy array: host-side inputs stay NumPy (no eager JAX op to compile) until a
    compiled program takes them."""
    return np.asarray(x, np.float64)


SERVING_FIELDS = frozenset({"isl", "osl", "cached_share", "tpot_ms", "ttft_ms", "tier_tpot_ms", "tier_ttft_ms", "bw_eff", "flops_eff",
                            "prefill_flops_eff", "moe_eff", "step_overhead_ms", "mem_util", "layer_overhead_us", "moe_layer_overhead_us",
                            "collective_latency_us", "ep_imbalance"})
"""Numbers fields that change the cost kernels' serving table (others reuse a precomputed one)."""


def _serving_inputs(n: Numbers, pools: Pools):
    """Per-pool efficiency factors and per-segment TPOT / TTFT targets (s; batch segments have none)."""
    table = EfficiencyTable(n.bw_eff, n.flops_eff, n.prefill_flops_eff, n.moe_eff, n.step_overhead_ms / 1000.0,
                            n.mem_util, n.layer_overhead_us * 1e-6, n.moe_layer_overhead_us * 1e-6,
                            n.collective_latency_us * 1e-6, n.ep_imbalance)
    interactive = ~pools.is_batch
    tpot, ttft = served_slo(n, pools)
    return (efficiency_at(table, pools.family), jnp.where(interactive, tpot / 1000.0, jnp.inf),
            jnp.where(interactive, ttft / 1000.0, jnp.inf))


def served_slo(n: Numbers, pools: Pools):
    """``(TPOT, TTFT)`` (S,) ms each segment is served at: the tighter of its own SLO and its tier's terms."""
    return (jnp.minimum(n.tpot_ms, n.tier_tpot_ms[pools.segment_tier]),
            jnp.minimum(n.ttft_ms, n.tier_ttft_ms[pools.segment_tier]))


def serving_of(n: Numbers, pools: Pools, bisection_steps: int = BISECTION_STEPS):
    """The (S, P) serving table of a scenario: GPU-s per request, feasible, batch, TPOT (s)."""
    effs, tpot, ttft = _serving_inputs(n, pools)
    wls = Workload(n.isl, n.osl, n.cached_share)
    return serving_table(pools.dep, effs, pools.spec, pools.disagg, pools.valid, wls, tpot, ttft, bisection_steps)


def candidate_scores(n: Numbers, pools: Pools, bisection_steps: int = BISECTION_STEPS):
    """GPU-s per request and feasibility of every (segment, pool, candidate) of a scenario, each (S, P, C)."""
    effs, tpot, ttft = _serving_inputs(n, pools)
    gpu_s, ok, *_ = candidate_table(pools.dep, effs, pools.spec, pools.disagg, pools.valid,
                                    Workload(n.isl, n.osl, n.cached_share), tpot, ttft, bisection_steps)
    return gpu_s, ok


candidate_scores_jit = jax.jit(candidate_scores, static_argnames=("bisection_steps",))


def prune_candidates(pools: Pools, gpu_s, ok) -> Pools:
    """Give each (segment, pool) only the deployments it chooses at the probed scenarios (``gpu_s``,
    ``ok`` from :func:`candidate_scores`: (S, P, C) of one scenario, or (M, S, P, C) of M).

    Sweeps re-evaluate the serving table per scenario when a serving input is an axis; evaluating
    the few deployments that win somewhere (the union of each probe's argmin: one or two of the
    dozens of candidate layouts on the `risk` design) instead of every candidate keeps that cost
    near the (S, P) lanes of a single-layout model. Each scenario then takes the best of those by
    the same exact argmin as a single run, which is the single run's own choice wherever the probes
    cover the serving axes (:func:`optimizer.sweep.axes.probe_rows`).

    Returns Pools whose ``dep``, ``spec``, ``disagg`` and ``valid`` have a leading segment axis,
    (S, P, W) with W the largest union (shorter ones padded with a repeat of their first: a tie
    the argmin resolves the same way). A (segment, pool) that no probe can serve keeps one
    candidate marked invalid. Host-side (NumPy).
    """
    idx, valid = kept_candidates(gpu_s, ok)
    rows = np.arange(idx.shape[1])[None, :, None]
    sub = lambda x: np.asarray(x)[rows, idx]  # noqa: E731  (P, C, ...) -> (S, P, W, ...), host-side
    return jax.device_put(pools._replace(dep=jax.tree.map(sub, pools.dep), spec=jax.tree.map(sub, pools.spec),
                                         disagg=sub(pools.disagg), valid=valid))


def kept_candidates(gpu_s, ok) -> tuple[np.ndarray, np.ndarray]:
    """``(index, valid)``, each (S, P, W): the candidates :func:`prune_candidates` keeps (the union
    of the argmins over the probes of ``gpu_s``, ``ok`` (S, P, C) or (M, S, P, C), in catalog order,
    padded with a repeat of the first) and whether each is one (False only where no probe can serve
    the pool). Host-side (NumPy)."""
    score = np.where(np.asarray(ok), np.asarray(gpu_s), np.inf)
    score = score[None] if score.ndim == 3 else score  # (M, S, P, C)
    best = np.argmin(score, axis=-1)[..., None]  # (M, S, P, 1)
    servable = np.isfinite(np.min(score, axis=-1, keepdims=True))
    kept = ((np.arange(score.shape[-1]) == best) & servable).any(0)  # (S, P, C): won at some probe
    width = max(1, int(kept.sum(-1).max()))
    order = np.argsort(~kept, axis=-1, kind="stable")[..., :width]  # kept candidates first, in catalog order
    n_kept = kept.sum(-1, keepdims=True)
    idx = np.where(np.arange(width) < np.maximum(n_kept, 1), order, order[..., :1])
    return idx, np.take_along_axis(kept, idx, axis=-1)


def assemble(n: Numbers, pools: Pools, serving=None, bisection_steps: int = BISECTION_STEPS) -> Problem:
    """The :class:`Problem` of one scenario's numbers (pure JAX: jit / vmap over stacked numbers).

    Runs the cost kernels at every (segment, pool) for the segment's shape and SLO (or reuses
    ``serving`` from :func:`serving_of` when no serving input changes), calibrates the demand to the
    reference point and gathers everything on the (S, J, K, G) grid. ``bisection_steps`` (static)
    sets the precision of the SLO batches (:func:`kernels.serving.slo_point`).
    """
    S, J = pools.offer_mask.shape
    G, _, K = pools.tp.shape
    table = serving_of(n, pools, bisection_steps) if serving is None else serving  # (S, P)
    gpu_s, ok, batch, tpot_served = table.gpu_s, table.feasible, table.batch, table.tpot_s
    offered = pools.offer_mask[:, pools.model] > 0  # (S, P)
    usable = ok & offered & jnp.isfinite(gpu_s)
    # every (S, P) field onto the (S, J, K, G) grid in one scatter (zero where unusable)
    fields = jnp.where(usable, jnp.stack([jnp.ones_like(gpu_s), gpu_s, batch, tpot_served * 1e3, table.choice + 1.0,
                                          table.prefill_share, table.replica_gpus]), 0.0)
    grid = jnp.zeros((fields.shape[0], S, J, K, G)).at[:, :, pools.model, pools.precision, pools.gpu].set(fields)
    route, gpu_s_t, batch_t, tpot_t, choice_t, prefill_t, replica = grid  # each (S, J, K, G)
    choice_t = choice_t - 1.0
    pool_gpus = jnp.transpose(replica.max(0), (2, 0, 1))  # (G, J, K) largest chosen replica per pool
    mix_mask = (route.sum(-1) > 0).astype(jnp.float64)

    offer = pools.offer_mask
    tokens = token_mix(n)
    sheet = reference_sheets(n, pools)
    ref_price = request_prices(jnp.log(sheet), tokens, pools.flow_product) * offer
    comp_ref = tokens @ jnp.stack([n.competitor_input, n.competitor_cached, n.competitor_output], 0)  # (S, C)
    comp_now = tokens @ jnp.stack([n.competitor_input * n.competitor_input_ratio,
                                   n.competitor_cached * n.competitor_cached_ratio,
                                   n.competitor_output * n.competitor_output_ratio], 0)
    share = n.volume_share * offer
    share = share / jnp.maximum(share.sum(-1, keepdims=True), 1e-30)
    ref_requests = n.volume * block_share(n.profile, n.peak_to_mean, n.window) / n.isl
    market, beta, alpha, comp_alpha = calibrate_logit(jnp.where(offer > 0, ref_price, 1.0), share, offer, ref_requests,
                                                      n.ref_market_share, n.elasticity, n.competitor_share,
                                                      n.nest_parameter)
    tpot_slo, _ = served_slo(n, pools)
    served_lat = jnp.where(jnp.isfinite(tpot_slo), tpot_slo, n.ref_tpot_ms)
    dp = DemandParams(ref_demand=ref_requests[:, None] * share, ref_price=ref_price, offer_mask=offer,
                      is_logit=pools.is_logit, elasticity=n.elasticity, market=market, beta=beta, alpha=alpha,
                      quality_sens=n.quality_sensitivity, latency_sens=n.latency_sensitivity,
                      ref_quality=jnp.ones((S, J)), ref_latency_ms=n.ref_tpot_ms,
                      comp_utility=jnp.where(pools.competitor_mask > 0, comp_alpha - beta[:, None] * (comp_now - comp_ref), 0.0),
                      comp_mask=pools.competitor_mask, nest=n.nest_parameter)
    scale = jnp.maximum((ref_requests[:, None] * share * ref_price).sum(), 1e-9)
    return Problem(
        demand=dp, quality=n.quality, mix_mask=mix_mask, route_mask=route, gpu_s_per_request=gpu_s_t,
        batch_at_slo=batch_t, tpot_ms=tpot_t, deployment=choice_t, prefill_share=prefill_t, usd_per_gpu_hour=n.usd_per_gpu_hour, capex_per_gpu=n.capex_per_gpu,
        tp=jnp.where(pool_gpus > 0, pool_gpus, pools.tp), is_batch=pools.is_batch, peak_to_mean=n.peak_to_mean,
        profile=n.profile, window=n.window, on_demand_ratio=on_demand_ratio(n), idle_ratio=idle_ratio(n), served_latency_ms=served_lat,
        gpu_cap=n.gpu_cap, on_demand_cap=n.on_demand_cap[:, None] * n.on_demand_cap_profile[None, :],
        budget_usd_per_day=n.budget_usd_per_day, capex_budget_usd=n.capex_budget_usd,
        min_quality=n.min_quality, log_mu_lo=jnp.log(n.product_floor), log_mu_hi=jnp.log(n.product_ceiling),
        log_band=jnp.log(jnp.maximum(n.product_band, 1.0 + 1e-9)),
        peak_utilization=n.peak_utilization, daily_utilization=n.daily_utilization, scale=scale,
        tokens=tokens, flow_product=pools.flow_product, sheet_ref=sheet, sheet_tie=pools.sheet_tie)


def problem_shapes(n: Numbers, pools: Pools) -> Problem:
    """The shapes and dtypes of ``assemble(n, pools)`` (a :class:`Problem` of ``jax.ShapeDtypeStruct``)
    without tracing the cost kernels: the serving table enters as shapes, so only the gathering and
    the demand calibration are traced (a few hundred operations against a few thousand). Lets a
    first run trace and compile the solve before the assembly is traced."""
    S, P = np.shape(pools.offer_mask)[0], np.shape(pools.model)[0]
    x = jax.ShapeDtypeStruct((S, P), jnp.result_type(float))
    table = ServingTable(x, jax.ShapeDtypeStruct((S, P), jnp.bool_), x, x, x, x, x)
    return jax.eval_shape(lambda n, p, t: assemble(n, p, serving=t), n, pools, table)


def _on_demand_cap_profile(fl, hws, periods: int) -> np.ndarray:
    """(T,) share of each on-demand cap available per period; (0,) when no GPU type has a cap (the
    shape tells every consumer, statically, that the caps' reserve problem can be skipped)."""
    capped = [hw.key for hw in hws if fl.on_demand_cap.get(hw.key) is not None]
    prof = fl.on_demand_cap_profile
    if prof is not None:
        if len(prof) != periods:
            raise ConfigError(f"fleet.on_demand_cap_profile has {len(prof)} values; accepted: one share per period "
                              f"(time.periods = {periods}), each in [0, 1], or null (the whole cap in every period)")
        bad = [v for v in prof if not (0.0 <= float(v) <= 1.0)]
        if bad:
            raise ConfigError(f"fleet.on_demand_cap_profile contains {bad[0]}; accepted: shares in [0, 1]")
        if not capped:
            raise ConfigError("fleet.on_demand_cap_profile is set but no fleet.on_demand_cap.<gpu> is; set a cap "
                              "(e.g. fleet.on_demand_cap.h100-sxm=64) or drop the profile")
    if capped and not fl.on_demand:
        raise ConfigError(f"fleet.on_demand_cap is set for {capped} but fleet.on_demand is false (no on-demand "
                          f"GPUs to cap); set fleet.on_demand=true or drop the caps")
    unpriced = [k for k in capped if next(h for h in hws if h.key == k).on_demand_usd_per_gpu_hour is None
                and fl.on_demand_usd_per_gpu_hour.get(k) is None]
    if unpriced:
        raise ConfigError(f"fleet.on_demand_cap.{unpriced[0]} caps on-demand GPUs that have no on-demand rent (none in "
                          f"the catalog, fleet.on_demand_usd_per_gpu_hour.{unpriced[0]} null); set that rent or drop the cap")
    if not capped:
        return np.zeros(0)
    return np.ones(periods) if prof is None else np.asarray(prof, float)


def on_demand_ratio(n: Numbers) -> jnp.ndarray:
    """(G,) on-demand / reserved rent, at least 1 (a dearer reserved GPU is never reserved, which
    a ratio of 1 expresses) and at most :data:`NO_ON_DEMAND` (none offered; a free GPU)."""
    ratio = n.on_demand_usd_per_gpu_hour / jnp.maximum(n.usd_per_gpu_hour, 1e-30)
    return jnp.clip(ratio, 1.0, NO_ON_DEMAND)


def idle_ratio(n: Numbers) -> jnp.ndarray:
    """(G,) value of an idle reserved GPU-hour / reserved rent, in [0, 1) (a value at or above the
    rent would make reserving without limit pay; the config refuses it, sweeps clip it)."""
    return jnp.clip(n.idle_value_usd_per_gpu_hour / jnp.maximum(n.usd_per_gpu_hour, 1e-30), 0.0, 1.0 - 1e-9)


def _rents(fl, hws) -> tuple[list, list]:
    """Reserved and on-demand USD per GPU-hour of each fleet GPU (NO_CAP: no on-demand), with the
    fleet's rules checked: on-demand not cheaper than reserved, an idle GPU-hour worth less than its rent."""
    rents, on_demand = [], []
    for hw in hws:
        r = gpu_rent(hw, fl.cost, fl.price_usd_per_gpu_hour.get(hw.key))
        od = fl.on_demand_usd_per_gpu_hour.get(hw.key)
        od = hw.on_demand_usd_per_gpu_hour if od is None else od
        if fl.on_demand and od is not None:
            if od < r:
                raise ConfigError(f"fleet.on_demand_usd_per_gpu_hour.{hw.key} = {od} is below its reserved rent {r} "
                                  f"(fleet.price_usd_per_gpu_hour.{hw.key} / the catalog): accepted a rent >= {r}, "
                                  f"or fleet.on_demand=false")
        if fl.idle_value_usd_per_gpu_hour > 0 and fl.idle_value_usd_per_gpu_hour >= r:
            raise ConfigError(f"fleet.idle_value_usd_per_gpu_hour = {fl.idle_value_usd_per_gpu_hour} is not below the "
                              f"reserved rent of '{hw.key}' ({r} USD/GPU-hour): accepted 0 <= value < {r}")
        rents.append(r)
        on_demand.append(od if (fl.on_demand and od is not None) else NO_CAP)
    return rents, on_demand


def token_mix(n: Numbers) -> jnp.ndarray:
    """(S, 3) million tokens per request of each segment billed as input, cached input and output."""
    return jnp.stack([n.isl * (1 - n.cached_share), n.isl * n.cached_share, n.osl], -1) / 1e6


def reference_sheets(n: Numbers, pools: Pools) -> jnp.ndarray:
    """(R, 3) reference USD/Mtok of each product; a contract's cache-hit price is its input price ×
    its segment's ``cached_price_ratio``."""
    seg = jnp.maximum(pools.contract_segment, 0)
    cached = jnp.where(pools.contract_segment >= 0, n.product_input * n.cached_price_ratio[seg], n.product_cached)
    return jnp.stack([n.product_input, cached, n.product_output], -1)





assemble_jit = jax.jit(assemble, static_argnames=("bisection_steps",))
serving_of_jit = jax.jit(serving_of, static_argnames=("bisection_steps",))


def check_feasible_routes(prob: Problem, labels: Labels, cfg: RunConfig) -> None:
    """Raise if an offered (segment, model) has no pool meeting its SLO."""
    route = np.asarray(prob.route_mask)
    offer = np.asarray(prob.demand.offer_mask)
    for si, s in enumerate(labels.segments):
        seg = cfg.demand.segments[labels.segment_parent[si] if labels.segment_parent else s]
        for ji, m in enumerate(labels.models):
            if offer[si, ji] > 0 and not route[si, ji].any():
                raise ConfigError(
                    f"segment '{s}' has no feasible deployment for model '{m}': no pool of GPUs "
                    f"{list(cfg.fleet.gpus)} x precisions {list(cfg.fleet.precisions)} meets tpot_ms={seg.tpot_ms}, "
                    f"ttft_ms={seg.ttft_ms} at isl={seg.isl:g}, osl={seg.osl:g}; relax the SLO or add GPUs")


def build_problem(cfg: RunConfig, program=None, before=None) -> tuple[Problem, Labels]:
    """Validate a scenario and build its :class:`Problem` arrays and :class:`Labels`.

    ``program(numbers, pools)`` replaces :data:`assemble_jit` (e.g. an exported copy of it);
    ``before(numbers, pools, labels)`` is called before it (e.g. to start compiling later programs).

    Raises:
      ConfigError (and subclasses) naming the field and the accepted values: bad segment fields,
      unknown catalog names, a model that fits no GPU, a segment with no feasible deployment.
    """
    numbers, pools, labels = scenario_inputs(cfg)
    if before is not None:
        before(numbers, pools, labels)
    prob = (program or (lambda n, p: assemble_jit(n, p)))(numbers, pools)
    check_feasible_routes(prob, labels, cfg)
    return prob, labels
