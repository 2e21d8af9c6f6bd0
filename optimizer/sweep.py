"""Vectorised what-if sweeps: thousands of scenarios in one compiled, sharded, chunked solve.

A sweep changes numeric leaves of one base scenario (:class:`optimizer.problem.Numbers`); the
structure (segments, models, GPU types, precisions, TP) stays fixed — structural choices go through
Hydra multirun instead. Each chunk of scenarios is one ``jit(vmap(assemble → solve))`` call whose
scenario axis is sharded over every device ``jax.devices()`` offers. Finished chunks are stored, so
an interrupted sweep resumes where it stopped and gives the same result as an uninterrupted one.

Sweeps solve the continuous-fleet relaxation (GPUs per pool derived from load), not the integer
repair: the figures are margins and fleets before rounding to whole replicas.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import math
import time
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from optimizer import aot, io
from optimizer.catalog import MODEL_ALIASES, canonical_model
from optimizer.constraints import active_mask
from optimizer.engine import settings_from
from optimizer.errors import ConfigError
from optimizer.objective import Decision, evaluate
from optimizer.problem import (PRICE_BOUND_TOL, SERVING_FIELDS, Labels, Numbers, Pools, assemble, assemble_jit,
                               candidate_scores_jit, prune_candidates, scenario_inputs, serving_of_jit)
from optimizer.schema import GPU_FAMILIES, AxisConfig, RunConfig, SweepConfig
from optimizer.dual import (N_LIMITS, WARM_START_STEPS, DualSettings, check_plan, dual_program, scratch_start,
                            solve_dual)
from optimizer.solver import INFEASIBLE_TOL, STATUS_NAMES, Settings, solve_batch


SWEEP_BISECTION_STEPS = 16
"""SLO-batch bisections per scenario in a sweep (single runs use 48). 16 leave the SLO batch within
``log(B_max)·2^-16`` ≈ 1.3e-4 (relative, on the feasible side) of the root, far below the solvers'
5e-3 tolerance, and cut the serving-table time by a third against 24 when a serving input is an axis."""

SEGMENT_FIELDS = {  # config field -> Numbers field (per segment)
    "input_tokens_per_day": "volume", "isl": "isl", "osl": "osl", "cached_share": "cached_share",
    "cached_price_ratio": "cached_price_ratio", "elasticity": "elasticity", "ref_market_share": "ref_market_share",
    "quality_sensitivity": "quality_sensitivity", "latency_sensitivity": "latency_sensitivity",
    "tpot_ms": "tpot_ms", "ttft_ms": "ttft_ms", "ref_tpot_ms": "ref_tpot_ms", "peak_to_mean": "peak_to_mean",
    "min_quality": "min_quality", "price_floor_ratio": "price_floor_ratio",
    "price_ceiling_ratio": "price_ceiling_ratio",
}
OFFER_FIELDS = {"input_usd_per_mtok": "ref_input_usd_per_mtok", "output_usd_per_mtok": "ref_output_usd_per_mtok",
                "volume_share": "volume_share"}
FLEET_SCALARS = {"budget_usd_per_day", "capex_budget_usd", "peak_utilization", "daily_utilization"}
FLEET_PER_GPU = {"price_usd_per_gpu_hour": "usd_per_gpu_hour", "gpu_caps": "gpu_cap"}
EFF_PER_FAMILY = {"bw_eff", "flops_eff", "prefill_flops_eff"}
EFF_SCALARS = {"moe_eff", "step_overhead_ms", "mem_util"}
PATH_FORMS = ("demand.segments.<segment>.<numeric field>", "demand.segments.<segment>.offers.<model>."
              "{input_usd_per_mtok,output_usd_per_mtok,volume_share}", "fleet.price_usd_per_gpu_hour.<gpu>",
              "fleet.gpu_caps.<gpu>", f"fleet.{{{','.join(sorted(FLEET_SCALARS))}}}",
              "efficiency.{bw_eff,flops_eff,prefill_flops_eff}.<gpu family>",
              f"efficiency.{{{','.join(sorted(EFF_SCALARS))}}}", "quality.<model>.<precision>")


class Target(NamedTuple):
    """Where an axis writes: a Numbers field and an index into it (() for scalars)."""

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
        s, rest = take(path[len("demand.segments."):], list(labels.segments), "segment")
        if rest in SEGMENT_FIELDS:
            return Target(SEGMENT_FIELDS[rest], (s,))
        if rest.startswith("offers."):
            j, field = take(_canonical_model_prefix(rest[len("offers."):], f"sweep axis path '{path}'"),
                            list(labels.models), "model")
            if labels.ref_input_usd_per_mtok[s][j] == 0:
                fail(f"names model '{labels.models[j]}', which segment '{labels.segments[s]}' does not offer")
            if field not in OFFER_FIELDS:
                fail(f"is not a numeric offer field ('{field}'; numeric: {', '.join(OFFER_FIELDS)})")
            return Target(OFFER_FIELDS[field], (s, j))
        fail(f"is not a numeric segment field ('{rest}'; numeric fields: {', '.join(SEGMENT_FIELDS)})")
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
        dist = ax.uniform or ax.loguniform
        values = list(dist) if dist else sorted(set(plan[n].tolist()))
        check_axis_values(cfg, n, ax.path, values, bool(ax.relative), quality_rule=quality)


ACTIVATES = {"budget_usd_per_day": "has_budget", "capex_budget_usd": "has_capex_budget",
             "gpu_cap": "has_gpu_cap", "min_quality": "has_min_quality"}
"""Numbers fields whose constraint an axis switches on in every scenario of the sweep."""


def activated(labels: Labels, targets: list[Target]) -> Labels:
    """Labels with the constraints that the axes set marked active."""
    for t in targets:
        flag = ACTIVATES.get(t.field)
        if flag is None:
            continue
        if t.index:  # per-GPU or per-segment flags
            v = list(getattr(labels, flag))
            v[t.index[0]] = True
            labels = dataclasses.replace(labels, **{flag: tuple(v)})
        else:
            labels = dataclasses.replace(labels, **{flag: True})
    return labels


def apply_axes(base: Numbers, targets: list[Target], relative: list[bool], values: jnp.ndarray) -> Numbers:
    """Numbers of one scenario: ``base`` with each target set to (or scaled by) its value. Pure."""
    fields = base._asdict()
    for t, rel, v in zip(targets, relative, values):
        leaf = fields[t.field]
        new = leaf[t.index] * v if rel else v
        fields[t.field] = leaf.at[t.index].set(new) if t.index else jnp.asarray(new, leaf.dtype)
    return Numbers(**fields)


class SweepResult(NamedTuple):
    """Per-scenario outputs of a chunk (leading axis = scenario)."""

    margin: jnp.ndarray  # USD/day
    revenue: jnp.ndarray
    gpu_cost: jnp.ndarray
    status: jnp.ndarray  # int, STATUS_NAMES
    violation: jnp.ndarray
    iterations: jnp.ndarray
    price_multiplier: jnp.ndarray  # (S, J)
    price_per_request: jnp.ndarray  # (S, J)
    requests: jnp.ndarray  # (S, J) per day
    quality: jnp.ndarray  # (S, J)
    mix: jnp.ndarray  # (S, J, K)
    gpus_by_type: jnp.ndarray  # (G,)
    bound: jnp.ndarray  # USD/day upper bound on the relaxed optimum (method=dual; NaN otherwise)
    price_bound: jnp.ndarray  # (S, J) int: -1 price at its floor, +1 at its ceiling, 0 inside the search range
    whole_ok: jnp.ndarray  # bool: the relaxed plan can be made whole (see plan_flags)


def plan_flags(b, prob) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(price at bound (S, J) in {-1, 0, +1}, relaxed plan can be made whole ()) of one plan. Pure.

    The plan can be made whole when rounding every pool's GPUs up to whole replicas of its deployment
    (``prob.tp`` GPUs) keeps every GPU cap, the daily budget and the capex budget; or, where a limit
    binds, rounding down leaves every pool that carries load at least one whole replica (the integer
    repair then serves the same flows on slightly less capacity, at slightly higher prices). It
    cannot when a capped pool's load needs less than one replica's GPUs within its limit.
    """
    lm = jnp.log(jnp.maximum(b.price_multiplier, 1e-300))
    at = jnp.where(lm <= prob.log_mu_lo[:, None] + PRICE_BOUND_TOL, -1,
                   jnp.where(lm >= prob.log_mu_hi[:, None] - PRICE_BOUND_TOL, 1, 0))
    rep = jnp.maximum(prob.tp, 1.0)
    used = b.gpus > 0.01 * rep  # smaller pools (softmax tails of the Adam solver) are dropped by a whole fleet
    up = jnp.where(used, jnp.ceil(b.gpus / rep - 1e-6) * rep, 0.0)
    per_type = up.sum((1, 2))
    slack = 1.0 + 1e-9
    up_ok = (jnp.all(per_type <= prob.gpu_cap * slack + 1e-9)
             & (jnp.sum(per_type * prob.usd_per_gpu_hour) * 24.0 <= prob.budget_usd_per_day * slack)
             & (jnp.sum(per_type * prob.capex_per_gpu) <= prob.capex_budget_usd * slack))
    down_ok = jnp.all(jnp.where(used, jnp.floor(b.gpus / rep + 1e-6) >= 1.0, True))
    return at, up_ok | down_ok


def initial_decision(prob, warm: Decision, starts: int) -> Decision:
    """Starts inside jit: the base scenario's optimum (warm), then reference prices × (1, 0.6, 1.7, ...)
    with uniform mix and routing."""
    if starts == 1:
        return jax.tree.map(lambda x: x[None], warm)
    factors = jnp.asarray(([1.0, 0.6, 1.7, 2.8, 0.35, 4.5, 1.25, 0.8] * (starts // 8 + 1))[:starts - 1])
    lo, hi = prob.log_mu_lo[:, None], prob.log_mu_hi[:, None]
    pos = jnp.clip((jnp.log(factors)[:, None, None] - lo) / (hi - lo), 1e-3, 1 - 1e-3)
    S, J = prob.demand.ref_price.shape
    K, G = prob.quality.shape[1], prob.usd_per_gpu_hour.shape[0]
    cold = Decision(jnp.broadcast_to(jnp.log(pos) - jnp.log1p(-pos), (starts - 1, S, J)),
                    jnp.zeros((starts - 1, S, J, K)), jnp.zeros((starts - 1, S, J, K, G)))
    return jax.tree.map(lambda w, c: jnp.concatenate([w[None], c]), warm, cold)


def solve_one(numbers: Numbers, pools: Pools, active: jnp.ndarray, settings: Settings, starts: int,
              warm: Decision, serving=None) -> SweepResult:
    """Assemble and solve one scenario (relaxed fleet), warm-started from the base optimum. Pure; vmappable."""
    prob = assemble(numbers, pools, serving, SWEEP_BISECTION_STEPS)
    dec0 = initial_decision(prob, warm, starts)
    act = jnp.broadcast_to(active, (starts,) + active.shape)
    fleets = jnp.zeros((starts,) + pools.tp.shape)
    sols = solve_batch(dec0, prob, act, fleets, jnp.zeros(starts, bool), settings)
    feasible = sols.violation <= INFEASIBLE_TOL
    score = jnp.where(jnp.isfinite(sols.objective), sols.objective, jnp.inf) + jnp.where(
        feasible, 0.0, 1e6 * (1.0 + sols.violation))
    i = jnp.argmin(score)
    best = jax.tree.map(lambda x: x[i], sols)
    b = evaluate(best.decision, prob)
    return SweepResult(b.margin, b.revenue.sum(), b.gpu_cost, best.status, best.violation, best.iterations,
                       b.price_multiplier, b.price_per_request, b.requests_per_day, b.quality, b.mix,
                       b.gpus.sum((1, 2)), jnp.asarray(jnp.nan), *plan_flags(b, prob))


def solve_one_dual(numbers: Numbers, pools: Pools, settings: DualSettings, warm: tuple[jnp.ndarray, jnp.ndarray],
                   active: jnp.ndarray, serving=None) -> SweepResult:
    """Assemble and solve one scenario with the structured dual solver, warm-started from the base
    scenario's cost split and limit prices ``warm = (μ, λ)``. Pure; vmappable. Status from
    :func:`optimizer.dual.check_plan` (limits within tolerance, certified gap within ``tol_gap``).
    """
    prob = assemble(numbers, pools, serving, SWEEP_BISECTION_STEPS)
    sol = solve_dual(prob, warm[0], settings, warm[1], active)
    c = check_plan(sol, prob, active, settings)
    b = c.breakdown
    return SweepResult(b.margin, b.revenue.sum(), b.gpu_cost, c.status, c.violation, jnp.asarray(settings.steps),
                       b.price_multiplier, b.price_per_request, b.requests_per_day, b.quality, b.mix,
                       b.gpus.sum((1, 2)), sol.bound, *plan_flags(b, prob))


BASE_STEPS = WARM_START_STEPS
"""Dual steps for the base scenario, whose cost split warm-starts the whole sweep."""
METHODS = ("auto", "dual", "adam")


def sweep_method(sw: SweepConfig, active: jnp.ndarray, n_limits: int) -> str:
    """The solver a sweep uses: ``dual`` handles the relaxed problem with GPU caps and budgets (the
    first ``n_limits`` constraint rows) but not quality floors, which go to ``adam``."""
    if sw.method not in METHODS:
        raise ConfigError(f"sweep.method = {sw.method!r} is invalid; accepted: {list(METHODS)}")
    floors = bool(np.asarray(active)[n_limits:].sum() > 0)
    if sw.method == "dual" and floors:
        raise ConfigError("sweep.method = 'dual' prices GPU caps and budgets but not quality floors "
                          "(demand.segments.*.min_quality), which this scenario (or an axis) sets; "
                          "use sweep.method=auto or adam")
    if sw.method == "auto":
        return "adam" if floors else "dual"
    return sw.method


def _chunk_solver(targets, relative, settings, starts, mesh, reuse_serving: bool):
    """The compiled chunk program; one per (axes, settings, mesh), reused by every later sweep."""
    return _compiled_chunk_solver(tuple(targets), tuple(relative), settings, starts, mesh, reuse_serving)


@functools.lru_cache(maxsize=16)
def _compiled_chunk_solver(targets, relative, settings, starts, mesh, reuse_serving: bool):
    def run(base, values, pools, active, warm, serving):
        nums = jax.vmap(lambda v: apply_axes(base, targets, relative, v))(values)
        serve = serving if reuse_serving else None
        if isinstance(settings, DualSettings):
            return jax.vmap(lambda n: solve_one_dual(n, pools, settings, warm, active, serve))(nums)
        return jax.vmap(lambda n: solve_one(n, pools, active, settings, starts, warm, serve))(nums)

    if mesh is None:
        return jax.jit(run)
    rows = NamedSharding(mesh, PartitionSpec("scenarios"))
    rep = NamedSharding(mesh, PartitionSpec())
    return jax.jit(run, in_shardings=(rep, rows, rep, rep, rep, rep), out_shardings=rows)


def sweep_key(cfg: RunConfig) -> str:
    """Hash of everything that determines the sweep's results: the whole config (not the chunk store,
    resume flag or output options), this package's source, the JAX version and the float width."""
    from omegaconf import OmegaConf

    d = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    d["sweep"].pop("resume", None)
    d["sweep"].pop("directory", None)
    d["output"] = None
    code = {"source": aot.source_hash(), "jax": jax.__version__, "x64": bool(jax.config.jax_enable_x64)}
    return hashlib.sha256(json.dumps([d, code], sort_keys=True, default=str).encode()).hexdigest()[:12]


def result_frame(res: SweepResult, labels: Labels, design_rows: pd.DataFrame, offset: int) -> pd.DataFrame:
    """Flatten a chunk's results into one row per scenario (float64, rounded)."""
    n = len(design_rows)
    out = design_rows.reset_index(drop=True).copy()
    out.insert(0, "scenario", np.arange(offset, offset + n))
    r = jax.tree.map(lambda x: np.asarray(x, dtype=float if np.asarray(x).dtype.kind == "f" else None)[:n], res)
    out["margin_usd_per_day"] = np.round(r.margin, 2)
    out["revenue_usd_per_day"] = np.round(r.revenue, 2)
    out["gpu_cost_usd_per_day"] = np.round(r.gpu_cost, 2)
    whole = np.asarray(r.whole_ok, bool)
    # a relaxed plan whose pools cannot be rounded up to whole replicas within the limits is no plan
    out["status"] = [STATUS_NAMES[int(s)] if int(s) != 0 or w else "no_whole_fleet" for s, w in zip(r.status, whole)]
    out["converged"] = (r.status == 0) & whole
    out["whole_fleet_feasible"] = whole
    at = np.asarray(r.price_bound)
    out["price_at_bound"] = [", ".join(f"{labels.segments[s]}/{labels.models[j]}:{'floor' if at[i, s, j] < 0 else 'ceiling'}"
                                       for s, j in zip(*np.nonzero(at[i])) if labels.ref_input_usd_per_mtok[s][j] > 0)
                             for i in range(n)]
    out["violation"] = r.violation
    out["iterations"] = r.iterations.astype(int)
    out["margin_upper_bound_usd_per_day"] = np.round(r.bound, 2)
    out["optimality_gap_bound"] = (r.bound - r.margin) / np.maximum(np.abs(r.bound), 1e-9)
    for s, seg in enumerate(labels.segments):
        for j, m in enumerate(labels.models):
            if labels.ref_input_usd_per_mtok[s][j] == 0:
                continue
            key = f"{seg}/{m}"
            out[f"price_vs_reference[{key}]"] = np.round(r.price_multiplier[:, s, j], 6)
            out[f"requests_per_day[{key}]"] = np.round(r.requests[:, s, j], 1)
            out[f"served_quality[{key}]"] = np.round(r.quality[:, s, j], 6)
            for k, prec in enumerate(labels.precisions):
                out[f"mix[{key}/{prec}]"] = np.round(r.mix[:, s, j, k], 6)
    for g, gpu in enumerate(labels.gpus):
        out[f"gpus[{gpu}]"] = np.round(r.gpus_by_type[:, g], 3)
    return out


def chunk_folder(store: Path, key: str, chunk: int) -> Path:
    """Where one sweep's chunks live: ``<store>/<sweep_key>-c<chunk>`` (sweeps sharing a store never mix)."""
    return Path(store) / f"{key}-c{chunk}"


def chunk_path(folder: Path, c: int) -> Path:
    """The finished rows of chunk ``c``."""
    return folder / f"chunk_{c:05d}.parquet"


def chunk_lock(folder: Path, c: int):
    """The advisory lock of chunk ``c``: held by the process that solves it until its file is written."""
    from filelock import FileLock

    return FileLock(folder / f"chunk_{c:05d}.lock")


def try_lock(lock) -> bool:
    """Take ``lock`` if it is free now (never waits)."""
    from filelock import Timeout

    try:
        lock.acquire(timeout=0)
    except Timeout:
        return False
    return True


def chunk_problem(df: pd.DataFrame, rows: pd.DataFrame, offset: int) -> str | None:
    """Why a stored chunk is not the rows ``rows`` (scenarios ``offset``...), or None when it is."""
    n = len(rows)
    if len(df) != n:
        return f"incomplete ({len(df)} rows, expected {n})"
    if "scenario" not in df.columns or not np.array_equal(df["scenario"].to_numpy(), np.arange(offset, offset + n)):
        return f"not scenarios {offset} to {offset + n - 1}"
    for col in rows.columns:
        if col not in df.columns or not np.array_equal(df[col].to_numpy(float), rows[col].to_numpy(float),
                                                       equal_nan=True):
            return f"for other values of axis '{col}'"
    return None


def read_chunk(path: Path, rows: pd.DataFrame, offset: int, log: Callable[[str], None]) -> pd.DataFrame | None:
    """A stored chunk's rows; None when it is missing, or invalid (then it is deleted and logged)."""
    try:
        df = pd.read_parquet(path)
        why = chunk_problem(df, rows, offset)
    except FileNotFoundError:
        return None
    except Exception as e:  # truncated or otherwise corrupt Parquet
        why = f"unreadable ({type(e).__name__}: {(str(e).splitlines() or [''])[0]})"
    if why is None:
        return df
    path.unlink(missing_ok=True)
    log(f"sweep chunk {path.parent.name}/{path.name} is {why}; deleted it, recomputing")
    return None


def remove_stale_temporaries(folder: Path, log: Callable[[str], None]) -> int:
    """Delete ``.chunk_*.tmp`` files whose chunk lock is free: left by a process that died while writing
    (a live writer holds the chunk's lock until its file is renamed into place)."""
    n = 0
    for tmp in folder.glob(".chunk_*.tmp"):
        c = tmp.name[len(".chunk_"):].split(".")[0]
        if not c.isdigit():
            continue
        lock = chunk_lock(folder, int(c))
        if try_lock(lock):
            try:
                tmp.unlink(missing_ok=True)
                n += 1
            finally:
                lock.release()
    if n:
        log(f"sweep store {folder}: removed {n} temporary file(s) left by a stopped run")
    return n


def run_sweep(cfg: RunConfig, outdir: Path, store: Path, progress: bool = False,
              stop_after_chunks: int | None = None, log: Callable[[str], None] = print) -> pd.DataFrame:
    """Solve every scenario of ``cfg.sweep`` and write ``sweep.parquet`` into ``outdir``.

    Args:
      cfg: the run config (its ``sweep`` has the axes).
      outdir: the run directory. store: where finished chunks live (the unit of resume), in a folder of
        this sweep's own (:func:`chunk_folder`); any number of sweeps and processes may share a store.
        A process solves a chunk under its lock; one whose lock another process holds is done last,
        from that process's file. Stored chunks are validated; an invalid one is solved again.
      progress: show a scenarios-per-second bar. stop_after_chunks: stop early (for tests of resume).
    """
    sw = cfg.sweep
    if not sw.axes:
        raise ConfigError("sweep.axes is empty: pick a sweep (sweep=what-if) or add axes")
    base, pools, labels = scenario_inputs(cfg)  # validates every field, sweep.chunk_size and starts included
    # each (segment, pool) keeps its base deployment (traced once per machine, like the other programs)
    pools = prune_candidates(pools, *aot.exported("candidate_scores", candidate_scores_jit, (base, pools))(base, pools))
    axes = axes_of(sw)
    names = list(axes)
    targets = [resolve_path(axes[n].path, labels) for n in names]
    plan = design(sw)
    check_axes(cfg, axes, plan)
    relative = [bool(axes[n].relative) for n in names]
    lab = activated(labels, targets)
    n_total = len(plan)
    base_prob = aot.exported("assemble", assemble_jit, (base, pools))(base, pools)
    active = jnp.asarray(active_mask(lab, base_prob, fixed_fleet=False))
    method = sweep_method(sw, active, len(labels.gpus) + N_LIMITS)
    log(f"sweep '{sw.name}': solver {method}")
    if method == "dual":
        settings = DualSettings(steps=sw.dual_steps, tol_gap=sw.dual_tol_gap)
        # the base scenario's cost split warm-starts every scenario (a long solve from an even split)
        base_settings = settings._replace(steps=BASE_STEPS)
        start = scratch_start(base_prob, active)
        base_sol = aot.exported("base_dual", dual_program(base_settings), start, repr(base_settings))(*start)
        warm_dec = (base_sol.mu, base_sol.lam)
    else:
        settings = settings_from(cfg.solver)
        # the base scenario's optimum warm-starts every scenario of the sweep
        from optimizer.solver import solve_multistart

        warm, _ = solve_multistart(base_prob, active, None, settings, cfg.solver.starts, cfg.solver.seed)
        warm_dec = warm.decision
    reuse = not any(t.field in SERVING_FIELDS for t in targets)
    serving = aot.exported("serving", serving_of_jit, (base, pools))(base, pools) if reuse else None
    devices = jax.devices()
    mesh = Mesh(np.asarray(devices), ("scenarios",)) if len(devices) > 1 else None
    nd = len(devices)
    chunk = min(sw.chunk_size, n_total)
    chunk = max(nd, math.ceil(chunk / nd) * nd)  # a multiple of the device count
    solver = _chunk_solver(targets, relative, settings, sw.starts, mesh, reuse)
    if mesh is None:  # traced once per machine (a rerun skips tracing; the compilation cache compiles)
        example = (base, np.zeros((chunk, len(names))), pools, active, warm_dec, serving)
        solver = aot.exported("sweep_chunk", solver, example, repr((targets, relative, settings, sw.starts, reuse)))
    key = sweep_key(cfg)
    folder = chunk_folder(store, key, chunk)  # this sweep's own folder: other sweeps in the store never mix
    folder.mkdir(parents=True, exist_ok=True)
    io.write_json(folder / "sweep_meta.json", {"key": key, "name": sw.name, "scenarios": n_total, "chunk_size": chunk,
                                                "axes": {n: axes[n].path for n in names}})
    remove_stale_temporaries(folder, log)
    if not sw.resume:
        old = list(folder.glob("chunk_*.parquet"))
        for p in old:
            p.unlink(missing_ok=True)
        if old:
            log(f"sweep.resume=false: deleted {len(old)} stored chunk(s) of this sweep, recomputing them")
    n_chunks = math.ceil(n_total / chunk)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=n_total, unit="scenario", desc=f"sweep {sw.name}", smoothing=0.1)
    t0 = time.perf_counter()
    frames: dict[int, pd.DataFrame] = {}  # validated rows of every chunk done (here or by another process)
    held = []  # chunk locks this process holds (released on any way out)
    skipped = []  # chunks another process was solving when this one reached them
    solved = 0  # chunks solved here
    n_solved = 0  # scenarios solved here
    waited = 0.0  # seconds spent waiting for other processes' chunks
    pending = None  # the chunk in flight: its results are written while the next one computes

    def rows_of(c):
        return plan.iloc[c * chunk:(c + 1) * chunk]

    def take_stored(c) -> bool:
        df = read_chunk(chunk_path(folder, c), rows_of(c), c * chunk, log)
        if df is None:
            return False
        frames[c] = df
        if bar:
            bar.update(len(df))
        return True

    def unlock(lock):
        held.remove(lock)
        lock.release()

    def launch(c):
        vals = rows_of(c).to_numpy(float)
        if len(vals) < chunk:  # pad the last chunk (same compiled shape), drop the padding after
            vals = np.concatenate([vals, np.repeat(vals[-1:], chunk - len(vals), axis=0)])
        return solver(base, jnp.asarray(vals), pools, active, warm_dec, serving)  # dispatched asynchronously

    def finish(job):
        nonlocal n_solved
        res, c, lock = job
        rows, path = rows_of(c), chunk_path(folder, c)
        frame = result_frame(res, labels, rows, c * chunk)
        try:  # the lock is held until the file is in place (atomically), so no one solves or reads it half-way
            io.write_frame(path, frame)
        finally:
            unlock(lock)
        frames[c] = frame
        if bar:
            bar.update(len(frame))
        n_solved += len(rows)

    try:
        for c in range(n_chunks):
            if take_stored(c):
                continue
            if stop_after_chunks is not None and solved >= stop_after_chunks:
                break
            lock = chunk_lock(folder, c)
            if not try_lock(lock):  # another process is solving it: come back for it at the end
                skipped.append(c)
                continue
            held.append(lock)
            if take_stored(c):  # finished by another process since the look above
                unlock(lock)
                continue
            res = launch(c)
            if pending is not None:
                finish(pending)
            pending = (res, c, lock)
            solved += 1
        if pending is not None:
            job, pending = pending, None
            finish(job)
        for c in skipped:  # wait for the other process; use its file, or solve the chunk if it left none
            if stop_after_chunks is not None and solved >= stop_after_chunks:
                break
            lock = chunk_lock(folder, c)
            t = time.perf_counter()
            lock.acquire()
            waited += time.perf_counter() - t
            held.append(lock)
            if take_stored(c):
                unlock(lock)
                continue
            finish((launch(c), c, lock))
            solved += 1
    finally:
        for lock in list(held):
            unlock(lock)
        if bar:
            bar.close()
    if len(frames) < n_chunks:
        log(f"sweep stopped with {len(frames)} of {n_chunks} chunks done; rerun the same command to resume")
        return pd.DataFrame()
    result = pd.concat([frames[c] for c in range(n_chunks)], ignore_index=True)
    wall = time.perf_counter() - t0
    io.write_frame(outdir / "sweep.parquet", result)
    n_bad = int((~result["converged"]).sum())
    rate = f"{n_solved / max(wall - waited, 1e-9):,.0f} scenarios/s" if n_solved else "nothing to solve"
    log(f"sweep '{sw.name}': {n_solved} of {n_total} scenarios solved here ({n_total - n_solved} reused) in "
        f"{wall:.1f} s ({rate}, {len(devices)} device(s)); {n_bad} not converged (flagged in the 'status' column)")
    return result


def axis_effects(result: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """How much each axis moves margin: mean margin at its low vs high end (others averaged).

    Grid axes use their lowest and highest values; sampled axes their bottom and top deciles.
    Only converged scenarios count. Sorted by the size of the swing.
    """
    ok = result[result["converged"]]
    rows = []
    for n in names:
        v = ok[n]
        if v.nunique() <= 12:
            lo_mask, hi_mask = v == v.min(), v == v.max()
        else:
            lo_mask, hi_mask = v <= v.quantile(0.1), v >= v.quantile(0.9)
        lo, hi = ok.loc[lo_mask, "margin_usd_per_day"].mean(), ok.loc[hi_mask, "margin_usd_per_day"].mean()
        rows.append({"axis": n, "low_value": float(v[lo_mask].mean()), "high_value": float(v[hi_mask].mean()),
                     "margin_at_low": round(float(lo), 2), "margin_at_high": round(float(hi), 2),
                     "swing_usd_per_day": round(float(abs(hi - lo)), 2)})
    return pd.DataFrame(rows).sort_values("swing_usd_per_day", ascending=False, ignore_index=True)


def sweep_plots(outdir: Path, result: pd.DataFrame, effects: pd.DataFrame, heat: list[str] | None) -> list[Path]:
    """Margin heatmap over two axes and a tornado chart of the axes' swings (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from optimizer.report import _save

    paths = []
    ok = result[result["converged"]]
    names = list(effects["axis"])
    if len(effects):
        fig, ax = plt.subplots(figsize=(7, 0.5 * len(effects) + 1.5))
        eff = effects.iloc[::-1]
        mid = float(ok["margin_usd_per_day"].mean())
        for i, r in enumerate(eff.itertuples()):
            ax.barh(i, r.margin_at_low - mid, left=mid, color="tab:red", alpha=0.7)
            ax.barh(i, r.margin_at_high - mid, left=mid, color="tab:green", alpha=0.7)
        ax.set_yticks(range(len(eff)), [f"{r.axis}\n{r.low_value:.3g} / {r.high_value:.3g}" for r in eff.itertuples()])
        ax.axvline(mid, color="black", lw=1)
        ax.set_xlabel("mean margin, USD/day (red: axis low, green: axis high)")
        ax.set_title("what moves margin")
        fig.tight_layout()
        paths.append(_save(fig, outdir / "tornado.png"))
    pair = heat if heat else names[:2]
    if len(pair) == 2 and all(p in ok.columns for p in pair):
        df = ok[pair + ["margin_usd_per_day"]].copy()
        for p in pair:
            if df[p].nunique() > 12:
                df[p] = pd.qcut(df[p], 10, duplicates="drop").apply(lambda iv: round(iv.mid, 4)).astype(float)
        piv = df.pivot_table(index=pair[1], columns=pair[0], values="margin_usd_per_day", aggfunc="mean")
        fig, ax = plt.subplots(figsize=(7, 5))
        im = ax.imshow(piv.to_numpy() / 1e3, origin="lower", aspect="auto", cmap="viridis")
        ax.set_xticks(range(piv.shape[1]), [f"{x:.3g}" for x in piv.columns], rotation=45)
        ax.set_yticks(range(piv.shape[0]), [f"{y:.3g}" for y in piv.index])
        ax.set_xlabel(pair[0])
        ax.set_ylabel(pair[1])
        fig.colorbar(im, ax=ax, label="mean margin (k$/day)")
        ax.set_title("margin over two axes")
        fig.tight_layout()
        paths.append(_save(fig, outdir / "heatmap.png"))
    return paths


def default_store(cfg: RunConfig) -> Path:
    """Chunk store of a sweep: ``sweep.directory`` or ``outputs/sweeps/<name>``. Each sweep keeps its
    chunks in its own ``<sweep_key>-c<chunk>`` folder inside (:func:`chunk_folder`), so sweeps may share one."""
    if cfg.sweep.directory:
        return Path(cfg.sweep.directory)
    return Path("outputs") / "sweeps" / cfg.sweep.name
