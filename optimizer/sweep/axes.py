"""Sweep axes and the experiment design: config paths → :class:`~optimizer.problem.Numbers` leaves.

A sweep changes numeric leaves of one base scenario; the structure (segments, models, GPU types,
precisions, candidate deployment layouts) stays fixed — structural choices go through Hydra
multirun instead. Which layout serves a pool is chosen per scenario, among those that win at the
probe rows (:func:`probe_rows`) when a serving input is an axis.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
import pandas as pd

from optimizer.catalog import MODEL_ALIASES, canonical_model, load_hardware
from optimizer.errors import ConfigError
from optimizer.problem import NO_CAP, Labels, Numbers
from optimizer.schema import GPU_FAMILIES, AxisConfig, RunConfig, SweepConfig

SEGMENT_FIELDS = {  # config field -> Numbers field (per segment)
    "input_tokens_per_day": "volume", "isl": "isl", "osl": "osl", "cached_share": "cached_share",
    "cached_price_ratio": "cached_price_ratio", "elasticity": "elasticity", "ref_market_share": "ref_market_share",
    "quality_sensitivity": "quality_sensitivity", "latency_sensitivity": "latency_sensitivity",
    "tpot_ms": "tpot_ms", "ttft_ms": "ttft_ms", "ref_tpot_ms": "ref_tpot_ms", "peak_to_mean": "peak_to_mean",
    "min_quality": "min_quality", "nest_parameter": "nest_parameter",
}
OFFER_FIELDS = {"input_usd_per_mtok": "product_input", "output_usd_per_mtok": "product_output",
                "volume_share": "volume_share"}
PRODUCT_FIELDS = {"input_usd_per_mtok": "product_input", "cached_input_usd_per_mtok": "product_cached",
                  "output_usd_per_mtok": "product_output", "price_floor_ratio": "product_floor",
                  "price_ceiling_ratio": "product_ceiling", "price_ratio_band": "product_band"}
COMPETITOR_FIELDS = {"input_usd_per_mtok": "competitor_input", "cached_input_usd_per_mtok": "competitor_cached",
                     "output_usd_per_mtok": "competitor_output", "input_price_ratio": "competitor_input_ratio",
                     "cached_input_price_ratio": "competitor_cached_ratio",
                     "output_price_ratio": "competitor_output_ratio"}
TIER_FIELDS = {"tpot_ms": "tier_tpot_ms", "ttft_ms": "tier_ttft_ms"}
FLEET_SCALARS = {"budget_usd_per_day", "capex_budget_usd", "peak_utilization", "daily_utilization",
                 "idle_value_usd_per_gpu_hour"}
FLEET_PER_GPU = {"price_usd_per_gpu_hour": "usd_per_gpu_hour", "gpu_caps": "gpu_cap",
                 "on_demand_usd_per_gpu_hour": "on_demand_usd_per_gpu_hour", "on_demand_cap": "on_demand_cap"}
EFF_PER_FAMILY = {"bw_eff", "flops_eff", "prefill_flops_eff"}
EFF_SCALARS = {"moe_eff", "step_overhead_ms", "mem_util"}
PATH_FORMS = ("demand.segments.<segment>.<numeric field>", "demand.segments.<segment>.offers.<model>."
              "{input_usd_per_mtok,output_usd_per_mtok,volume_share}", "demand.segments.<segment>.products.<product>",
              "demand.segments.<segment>.competitors.<competitor>",
              f"demand.products.<product>.{{{','.join(PRODUCT_FIELDS)}}}",
              f"demand.competitors.<competitor>.{{{','.join(COMPETITOR_FIELDS)}}}",
              f"demand.tiers.<tier>.{{{','.join(TIER_FIELDS)}}}", "fleet.price_usd_per_gpu_hour.<gpu>",
              "fleet.on_demand_usd_per_gpu_hour.<gpu>",
              "fleet.gpu_caps.<gpu>", "fleet.on_demand_cap.<gpu>", f"fleet.{{{','.join(sorted(FLEET_SCALARS))}}}",
              "efficiency.{bw_eff,flops_eff,prefill_flops_eff}.<gpu family>",
              f"efficiency.{{{','.join(sorted(EFF_SCALARS))}}}", "quality.<model>.<precision>")


class Target(NamedTuple):
    """Where an axis writes: a Numbers field and an index into it (() for scalars; a tuple of
    segment indices in first place for every block of a segment split by the clock)."""

    field: str
    index: tuple


def _split_name(rest: str, names: list[str]) -> tuple[str | None, str]:
    """Split ``rest`` into a known name (which may contain dots: a user's own catalog key) and the remainder."""
    for n in sorted(names, key=len, reverse=True):
        if rest == n or rest.startswith(n + "."):
            return n, rest[len(n) + 1:]
    head, _, tail = rest.partition(".")
    return None, head if not tail else head + "." + tail


def _canonical_model_prefix(rest: str, where: str) -> str:
    """``rest`` with a leading old (dotted) model key of MODEL_ALIASES replaced by its catalog key (warns)."""
    for old in sorted(MODEL_ALIASES, key=len, reverse=True):
        if rest == old or rest.startswith(old + "."):
            return canonical_model(old, where=where) + rest[len(old):]
    return rest


def resolve_path(path: str, labels: Labels) -> Target:
    """Map a dotted config path to a :class:`Numbers` leaf, or raise naming the path."""

    def fail(why: str):
        raise ConfigError(f"sweep axis path '{path}' {why}. Accepted forms: " + "; ".join(PATH_FORMS))

    def take(rest: str, options: list[str], what: str) -> tuple[int, str]:
        name, remainder = _split_name(rest, options)
        if name is None:
            fail(f"names unknown {what} '{rest.split('.')[0]}' (available: {', '.join(options)})")
        return options.index(name), remainder

    if path.startswith("demand.segments."):
        parents = list(labels.segment_parent or labels.segments)
        name_i, rest = take(path[len("demand.segments."):], list(dict.fromkeys(parents)), "segment")
        name = list(dict.fromkeys(parents))[name_i]
        blocks = tuple(i for i, p in enumerate(parents) if p == name)  # a segment split by the clock: every block
        s = blocks[0] if len(blocks) == 1 else blocks
        if rest in SEGMENT_FIELDS:
            return Target(SEGMENT_FIELDS[rest], (s,))
        if rest.startswith("offers."):
            j, field = take(_canonical_model_prefix(rest[len("offers."):], f"sweep axis path '{path}'"),
                            list(labels.models), "model")
            r = labels.flow_product[blocks[0]][j]
            if len(blocks) > 1 or r < 0 or labels.product_contract[r] != blocks[0]:
                fail(f"names model '{labels.models[j]}', which segment '{name}' has no offer of")
            if field not in OFFER_FIELDS:
                fail(f"is not a numeric offer field ('{field}'; numeric: {', '.join(OFFER_FIELDS)})")
            return Target(OFFER_FIELDS[field], (s, j) if field == "volume_share" else (r,))
        if rest.startswith("products."):
            r, extra = take(rest[len("products."):], list(labels.products), "product")
            j = labels.product_model[r]
            if extra or all(labels.flow_product[b][j] != r for b in blocks):
                fail(f"names product '{labels.products[r]}', which segment '{name}' does not buy")
            return Target("volume_share", (s, j))
        if rest.startswith("competitors."):
            c, extra = take(rest[len("competitors."):], list(labels.competitors), "competitor")
            if extra:
                fail("has a field after the competitor (its share is the value itself)")
            return Target("competitor_share", (s, c))
        fail(f"is not a numeric segment field ('{rest}'; numeric fields: {', '.join(SEGMENT_FIELDS)})")
    for prefix, names, fields in (("demand.products.", labels.products, PRODUCT_FIELDS),
                                  ("demand.competitors.", labels.competitors, COMPETITOR_FIELDS),
                                  ("demand.tiers.", tuple(t[0] for t in labels.tier_terms), TIER_FIELDS)):
        if path.startswith(prefix):
            i, field = take(path[len(prefix):], list(names), prefix.split(".")[1][:-1])
            if field not in fields:
                fail(f"is not a numeric field ('{field}'; numeric: {', '.join(fields)})")
            return Target(fields[field], (i,))
    p = path.split(".")
    if p[0] == "fleet":
        if len(p) == 2 and p[1] in FLEET_SCALARS:
            return Target(p[1], ())
        if len(p) >= 3 and p[1] in FLEET_PER_GPU:
            g, rest = take(".".join(p[2:]), list(labels.gpus), "GPU")
            if not rest:
                return Target(FLEET_PER_GPU[p[1]], (g,))
    if p[0] == "efficiency":
        if len(p) == 2 and p[1] in EFF_SCALARS:
            return Target(p[1], ())
        if len(p) == 3 and p[1] in EFF_PER_FAMILY:
            f, _ = take(p[2], list(GPU_FAMILIES), "GPU family")
            return Target(p[1], (f,))
    if path.startswith("quality."):
        j, rest = take(_canonical_model_prefix(path[len("quality."):], f"sweep axis path '{path}'"),
                       list(labels.models), "model")
        k, extra = take(rest, list(labels.precisions), "precision")
        if not extra:
            return Target("quality", (j, k))
    fail("does not exist or is not numeric")


def axis_config(name: str, value) -> AxisConfig:
    """Validate one ``sweep.axes`` entry against :class:`AxisConfig` (names the axis on error)."""
    if isinstance(value, AxisConfig):
        return value
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(AxisConfig), value))
    except OmegaConfBaseException as e:
        fields = ", ".join(f.name for f in dataclasses.fields(AxisConfig))
        raise ConfigError(f"sweep.axes.{name} is invalid ({str(e).splitlines()[0]}); an axis has the fields "
                          f"{fields}") from None


def axes_of(sweep: SweepConfig) -> dict[str, AxisConfig]:
    """The validated axes of a sweep, in order."""
    return {n: axis_config(n, v) for n, v in sweep.axes.items()}


def axis_values(name: str, ax: AxisConfig, mode: str) -> np.ndarray | tuple[str, float, float]:
    """A grid axis's values, or ``(kind, low, high)`` for a sampled distribution."""
    given = {k: getattr(ax, k) for k in ("values", "linspace", "logspace", "uniform", "loguniform")
             if getattr(ax, k) is not None}
    if len(given) != 1:
        raise ConfigError(f"sweep.axes.{name}: give exactly one of values, linspace, logspace, uniform, "
                          f"loguniform (got {sorted(given) or 'none'})")
    kind, v = next(iter(given.items()))
    if kind == "values":
        if not v:
            raise ConfigError(f"sweep.axes.{name}.values is empty")
        return np.asarray(v, float)
    if kind in ("linspace", "logspace"):
        if len(v) != 3 or int(v[2]) < 1 or (kind == "logspace" and min(v[0], v[1]) <= 0):
            raise ConfigError(f"sweep.axes.{name}.{kind} must be [start, stop, num] with num >= 1"
                              + (" and positive ends" if kind == "logspace" else "") + f", got {list(v)}")
        f = np.linspace if kind == "linspace" else np.geomspace
        return f(v[0], v[1], int(v[2]))
    if len(v) != 2 or not v[0] < v[1] or (kind == "loguniform" and v[0] <= 0):
        raise ConfigError(f"sweep.axes.{name}.{kind} must be [low, high] with low < high"
                          + (" and low > 0" if kind == "loguniform" else "") + f", got {list(v)}")
    if mode == "grid":
        raise ConfigError(f"sweep.axes.{name} is a distribution ({kind}); use sweep.mode=sample, or give "
                          f"values / linspace / logspace for a grid")
    return (kind, float(v[0]), float(v[1]))


def latin_hypercube(n: int, d: int, seed: int) -> np.ndarray:
    """(n, d) Latin-hypercube sample of the unit cube (one point per stratum on every axis)."""
    rng = np.random.default_rng(seed)
    u = (rng.random((n, d)) + np.arange(n)[:, None]) / n
    for k in range(d):
        u[:, k] = u[rng.permutation(n), k]
    return u


def design(sweep: SweepConfig) -> pd.DataFrame:
    """The scenarios: one row per scenario, one column per axis (values as given, before ``relative``)."""
    if sweep.mode not in ("grid", "sample"):
        raise ConfigError(f"sweep.mode = '{sweep.mode}'; accepted: 'grid', 'sample'")
    axes = axes_of(sweep)
    names = list(axes)
    vals = {n: axis_values(n, axes[n], sweep.mode) for n in names}
    if sweep.mode == "grid":
        grid = list(itertools.product(*(vals[n] for n in names)))
        return pd.DataFrame(grid, columns=names)
    if sweep.samples < 1:
        raise ConfigError(f"sweep.samples must be >= 1, got {sweep.samples}")
    u = latin_hypercube(sweep.samples, len(names), sweep.seed)
    cols = {}
    for k, n in enumerate(names):
        v = vals[n]
        if isinstance(v, tuple):
            kind, lo, hi = v
            cols[n] = lo + (hi - lo) * u[:, k] if kind == "uniform" else np.exp(
                np.log(lo) + (np.log(hi) - np.log(lo)) * u[:, k])
        else:  # a finite set sampled by strata over its indices
            cols[n] = v[np.minimum((u[:, k] * len(v)).astype(int), len(v) - 1)]
    return pd.DataFrame(cols)


def check_axes(cfg: RunConfig, axes: dict[str, AxisConfig], plan: pd.DataFrame) -> None:
    """Every axis value must be a valid value of its field (distributions: both ends), as in a single run."""
    from optimizer.schema import QualityRetention
    from optimizer.validate import check_axis_values, field_rule

    quality = field_rule(QualityRetention, "fp8")  # quality.<model>.<precision> paths: a retention fraction
    for n, ax in axes.items():
        if ax.path.startswith("fleet.on_demand_usd_per_gpu_hour.") and not cfg.fleet.on_demand:
            raise ConfigError(f"sweep.axes.{n} (path {ax.path}) sweeps an on-demand rent, but fleet.on_demand is "
                              f"false; set fleet.on_demand=true (on-demand GPUs offered) or drop the axis")
        part = ax.path.split(".")
        if len(part) == 3 and part[0] == "efficiency" and part[1] in EFF_PER_FAMILY:
            fleet = {g: load_hardware(g).family for g in cfg.fleet.gpus}
            if part[2] not in fleet.values():
                raise ConfigError(f"sweep.axes.{n} (path {ax.path}) sweeps GPU family '{part[2]}', which no GPU of "
                                  f"fleet.gpus is in ({', '.join(f'{g}: {f}' for g, f in fleet.items())}), so it "
                                  f"changes nothing; accepted families here: {', '.join(sorted(set(fleet.values())))}")
        if ax.path.startswith("fleet.on_demand_cap."):
            gpu = ax.path[len("fleet.on_demand_cap."):]
            if cfg.fleet.on_demand_cap.get(gpu) is None:
                raise ConfigError(f"sweep.axes.{n} (path {ax.path}) sweeps the on-demand cap of {gpu}, which the base "
                                  f"scenario does not set; set fleet.on_demand_cap.{gpu} (the cap the axis "
                                  f"{'scales' if ax.relative else 'replaces'}) or drop the axis")
        dist = ax.uniform or ax.loguniform
        values = list(dist) if dist else sorted(set(plan[n].tolist()))
        check_axis_values(cfg, n, ax.path, values, bool(ax.relative), quality_rule=quality)


RENT_FIELDS = ("usd_per_gpu_hour", "on_demand_usd_per_gpu_hour", "idle_value_usd_per_gpu_hour")


def check_rents(numbers: Numbers, targets: list[Target], relative: list[bool], plan: pd.DataFrame,
                names: list[str], gpus: list[str]) -> None:
    """With an axis on an on-demand rent or on the idle value, every scenario must keep each GPU's
    on-demand rent at or above its reserved rent and its idle value below it, as a single run's
    config must (the reserved-rent axes count too), including a GPU whose on-demand rent only the axis
    sets (the base scenario offers it none: an axis of rents in USD/GPU-hour offers it; one that
    scales the missing rent is refused). Without such an axis, a reserved rent swept above the
    on-demand rent is clipped to it, as :func:`optimizer.problem.on_demand_ratio` says."""
    axes = [(n, t, rel) for n, t, rel in zip(names, targets, relative) if t.field in RENT_FIELDS]
    if not any(t.field != "usd_per_gpu_hour" for _, t, _ in axes):
        return
    rows = {f: np.tile(np.broadcast_to(np.asarray(getattr(numbers, f), float), (len(gpus),)), (len(plan), 1))
            for f in RENT_FIELDS}  # (scenarios, G) USD per GPU-hour
    none = rows["on_demand_usd_per_gpu_hour"][0] >= NO_CAP / 10  # (G,) no on-demand rent in the base scenario
    for n, t, rel in axes:
        v = plan[n].to_numpy(float)[:, None]
        cols = list(t.index) if t.index else slice(None)  # a per-GPU rent, or the idle value of every GPU
        if t.field == "on_demand_usd_per_gpu_hour" and rel and none[cols].any():
            gpu = gpus[t.index[0]]
            raise ConfigError(f"sweep.axes.{n} scales the on-demand rent of {gpu}, which has none in the base scenario "
                              f"(none in the catalog); set fleet.on_demand_usd_per_gpu_hour.{gpu} (the rent the axis "
                              f"scales) or give the axis rents in USD/GPU-hour (relative: false)")
        rows[t.field][:, cols] = rows[t.field][:, cols] * v if rel else v
    swept = ", ".join(f"sweep.axes.{n}" for n, _, _ in axes)
    reserved, on_demand, idle = (rows[f] for f in RENT_FIELDS)
    offered = on_demand < NO_CAP / 10  # (scenarios, G): an axis may offer a GPU the base does not
    for g, gpu in enumerate(gpus):
        bad = np.flatnonzero(offered[:, g] & (on_demand[:, g] < reserved[:, g] * (1 - 1e-9)))
        if bad.size:
            i = bad[0]
            raise ConfigError(f"{swept}: {bad.size} scenario(s) put the on-demand rent of {gpu} below its reserved "
                              f"rent (scenario {i}: {on_demand[i, g]:.4g} < {reserved[i, g]:.4g} USD/GPU-hour); "
                              f"accepted: on-demand at or above reserved")
        bad = np.flatnonzero((idle[:, g] > 0) & (idle[:, g] >= reserved[:, g]))
        if bad.size:
            i = bad[0]
            raise ConfigError(f"{swept}: {bad.size} scenario(s) put the idle value of {gpu} at or above its reserved "
                              f"rent (scenario {i}: {idle[i, g]:.4g} >= {reserved[i, g]:.4g} USD/GPU-hour); "
                              f"accepted: below the rent")


ACTIVATES = {"budget_usd_per_day": "has_budget", "capex_budget_usd": "has_capex_budget",
             "gpu_cap": "has_gpu_cap", "min_quality": "has_min_quality"}
"""Numbers fields whose constraint an axis switches on in every scenario of the sweep."""


def activated(labels: Labels, targets: list[Target]) -> Labels:
    """Labels with the constraints that the axes set marked active."""
    for t in targets:
        flag = ACTIVATES.get(t.field)
        if flag is None:
            continue
        if t.index:  # per-GPU or per-segment flags (every block of a segment split by the clock)
            v = list(getattr(labels, flag))
            for i in np.atleast_1d(t.index[0]):
                v[int(i)] = True
            labels = dataclasses.replace(labels, **{flag: tuple(v)})
        else:
            labels = dataclasses.replace(labels, **{flag: True})
    return labels


def apply_axes(base: Numbers, targets: list[Target], relative: list[bool], values: jnp.ndarray) -> Numbers:
    """Numbers of one scenario: ``base`` with each target set to (or scaled by) its value. Pure."""
    fields = base._asdict()
    for t, rel, v in zip(targets, relative, values):
        leaf = jnp.asarray(fields[t.field])  # host-side NumPy numbers become arrays here
        new = leaf[t.index] * v if rel else v
        fields[t.field] = leaf.at[t.index].set(new) if t.index else jnp.broadcast_to(jnp.asarray(new, leaf.dtype), leaf.shape)
    return Numbers(**fields)


MAX_PROBES = 32
"""Scenarios at most whose serving tables pick a sweep's deployments (:func:`probe_rows`)."""


def probe_rows(plan: pd.DataFrame, serving: list[bool], max_probes: int = MAX_PROBES) -> np.ndarray:
    """Indices of the design rows whose deployments a sweep keeps (:func:`optimizer.problem.prune_candidates`):
    every distinct combination of the serving axes' values (``serving``: one flag per column of
    ``plan``) when there are at most ``max_probes``, else ``max_probes`` of them spread over their
    range by farthest-point sampling (each column scaled to [0, 1]; the extremes come first).
    Empty when no axis is a serving input.

    A scenario between two probes takes the better of their deployments, which is its own best
    wherever the best changes at most once between neighbouring probes; at a crossing the
    candidates' GPU-s per request are equal, so a miss near one costs little.
    """
    cols = [c for c, s in zip(plan.columns, serving) if s]
    if not cols:
        return np.zeros(0, int)
    x = plan[cols].to_numpy(float)
    _, first = np.unique(x, axis=0, return_index=True)
    first = np.sort(first)
    if len(first) <= max_probes:
        return first
    u = x[first]
    span = u.max(0) - u.min(0)
    u = (u - u.min(0)) / np.where(span > 0, span, 1.0)
    chosen = [int(np.argmin(u.sum(1)))]  # the lowest corner first
    dist = np.linalg.norm(u - u[chosen[0]], axis=1)
    while len(chosen) < max_probes:
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(u - u[nxt], axis=1))
    return np.sort(first[chosen])
