"""`tokenmargin-estimate`: throughput, latency and $/Mtok of one deployment, or of a cases CSV.

Hydra-free: :func:`estimate_one` and :func:`estimate_cases` take typed dataclasses and return
DataFrames, so tests and notebooks call them directly.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from kernels.cost import usd_per_mtok
from kernels.roofline import weight_bytes_per_gpu
from kernels.serving import max_throughput_point, operating_point, slo_point
from optimizer import catalog
from optimizer.cases import error_summary, predict_frame, read_cases
from optimizer.errors import ConfigError, DoesNotFit, InfeasibleProblem
from optimizer.deployments import candidate_layouts, with_draft_lengths
from optimizer.params import (Layout, build_deployment, build_mtp, build_speculation, build_workload,
                              check_precision_supported, efficiency_for, gpu_rent, stack_trees,
                              validate_layout)
from optimizer.schema import EstimateConfig
from optimizer.validate import validate
from optimizer.runtime import require_float64


def _bound(mem_share: float) -> str:
    return "memory" if mem_share >= 0.5 else "compute"


def estimate_layouts(cfg: EstimateConfig) -> list[Layout]:
    """The layouts ``cfg`` allows: the given deployment keys, the rest free (the candidates of
    :func:`optimizer.deployments.candidate_layouts`, or the one layout when every key is given)."""
    validate(cfg)  # every field against its accepted values (a no-op for configs from to_schema)
    hw, model, prec = cfg.hardware, cfg.model, cfg.precision
    for name in ("gpus", "nodes", "tp", "ep"):
        v = getattr(cfg, name)
        if v is not None and not v >= 1:
            raise ConfigError(f"{name} must be an integer >= 1 or null (= best), got {v}")
    gpus = cfg.gpus
    if cfg.nodes is not None:
        by_nodes = cfg.nodes * hw.gpus_per_node
        if gpus is not None and gpus != by_nodes:
            raise ConfigError(f"gpus={gpus} disagrees with nodes={cfg.nodes} x {hw.gpus_per_node} GPUs per "
                              f"'{hw.key}' node; set one of them")
        gpus = by_nodes
    if gpus is None and cfg.tp is not None and (model.num_experts == 0 or cfg.ep is None):
        gpus = cfg.tp  # plain tensor parallelism, as before deployments were explicit
    sp = cfg.speculative
    method = sp.method
    if method not in (None, "none", "mtp", "draft"):
        raise ConfigError(f"speculative.method = {method!r}; accepted: null (best), none, mtp, draft")
    if method is None and sp.draft_len > 0:
        method = "draft"  # a draft length without a method keeps its old meaning: a draft model
    if method == "mtp" and not model.mtp_accepted_tokens:
        raise ConfigError(f"speculative.method=mtp: model '{model.key}' has no MTP head with sourced acceptance; "
                          f"models with one: {', '.join(k for k in catalog.available('model') if catalog.load_model(k).mtp_accepted_tokens)}")
    ks = None
    if method in ("none", "draft"):
        ks = {0}
    elif method == "mtp":
        ks = {sp.draft_len} if sp.draft_len else {1, 3}
    context = cfg.isl + cfg.osl
    if gpus is not None and cfg.tp is not None and cfg.disaggregated is not None and ks is not None and len(ks) == 1 \
            and (cfg.ep is not None or model.num_experts == 0):
        lay = Layout(gpus=gpus, tp=cfg.tp, ep=cfg.ep or 1, disaggregated=cfg.disaggregated, spec_k=next(iter(ks)))
        validate_layout(hw, model, lay)
        return [lay]
    lays = candidate_layouts(hw, model, prec, cfg.efficiency.mem_util, context, gpus=gpus)
    if ks is not None and gpus is not None:
        lays = with_draft_lengths(lays, model, sorted(ks))
    if cfg.tp is not None or cfg.ep is not None:
        extra = []
        for x in lays:
            t = cfg.tp if cfg.tp is not None else x.tp
            e = cfg.ep if cfg.ep is not None else x.ep
            if x.gpus % t == 0 and (model.num_experts == 0 or x.gpus % e == 0):
                extra.append(Layout(x.gpus, t, e, x.disaggregated, x.spec_k))
        lays = extra
    out = []
    for x in dict.fromkeys(lays):
        if (cfg.disaggregated is not None and x.disaggregated != cfg.disaggregated) or (ks is not None and x.spec_k not in ks):
            continue
        try:
            validate_layout(hw, model, x)
        except ConfigError:
            continue
        out.append(x)
    if not out and gpus is not None:
        lay = Layout(gpus=gpus, tp=cfg.tp or gpus, ep=cfg.ep or 1)
        validate_layout(hw, model, lay)  # a bad layout says why; otherwise it is too small
        dep = build_deployment(hw, model, prec, lay)
        raise DoesNotFit(
            f"model '{model.key}' at {prec.key} does not fit {gpus}x {hw.key} ({lay.label()}): "
            f"{float(weight_bytes_per_gpu(dep)) / 1e9:.1f} GB of weights per GPU + KV for one {context:g}-token "
            f"sequence exceed the usable {hw.memory_gb * cfg.efficiency.mem_util:.1f} GB "
            f"({cfg.efficiency.mem_util:.0%} of {hw.memory_gb:g} GB); use more GPUs (gpus=, nodes=, or leave them "
            f"null to search), or a lower precision")
    if not out:
        raise DoesNotFit(
            f"model '{model.key}' at {prec.key} has no deployment on '{hw.key}' that holds its weights plus one "
            f"{context:g}-token sequence and matches gpus={cfg.gpus}, nodes={cfg.nodes}, tp={cfg.tp}, ep={cfg.ep}, "
            f"disaggregated={cfg.disaggregated}, speculative.method={sp.method}; free a key (null = best), raise "
            f"gpus or pick a lower precision")
    return out


def _speculation_for(cfg: EstimateConfig, lay: Layout):
    if lay.spec_k:
        return build_mtp(cfg.model, lay.spec_k, None)
    sp = build_speculation(cfg.speculative)
    return type(sp)(*(np.float64(x) for x in sp))


@functools.partial(jax.jit, static_argnames=("mode",))
def _points(deps, specs, dis, eff, wl, batch, tpot_s, ttft_s, mode: str):
    """Operating points of stacked candidate layouts (one compiled ``vmap``): (ServingPoint, meets target)."""

    def one(dep, spec, x):
        if mode == "fixed":
            return operating_point(dep, eff, wl, batch, spec, x), jnp.asarray(True)
        if mode == "slo":
            return slo_point(dep, eff, wl, tpot_s, ttft_s, spec, disaggregated=x)
        return max_throughput_point(dep, eff, wl, spec, x), jnp.asarray(True)

    return jax.vmap(one)(deps, specs, dis)


def _evaluate(cfg: EstimateConfig, layouts: list[Layout], eff, wl, target) -> list:
    """[(layout, ServingPoint of floats, meets target)] for every layout under ``target``."""
    deps = jax.tree.map(jnp.asarray, stack_trees(
        [build_deployment(cfg.hardware, cfg.model, cfg.precision, lay, None) for lay in layouts], np))
    specs = jax.tree.map(jnp.asarray, stack_trees([_speculation_for(cfg, lay) for lay in layouts], np))
    dis = jnp.asarray([float(lay.disaggregated) for lay in layouts])
    if target.concurrency is not None:
        mode, tpot, ttft = "fixed", math.inf, math.inf
    elif target.tpot_ms is not None or target.ttft_ms is not None:
        mode = "slo"
        tpot = target.tpot_ms / 1000.0 if target.tpot_ms is not None else math.inf
        ttft = target.ttft_ms / 1000.0 if target.ttft_ms is not None else math.inf
    else:
        mode, tpot, ttft = "max", math.inf, math.inf
    batch = float(target.concurrency) if target.concurrency is not None else 1.0
    pts, ok = _points(deps, specs, dis, eff, wl, jnp.asarray(batch), jnp.asarray(tpot), jnp.asarray(ttft), mode=mode)
    pts = jax.tree.map(np.asarray, pts)
    ok = np.asarray(ok)
    return [(lay, jax.tree.map(lambda x: x[i], pts), bool(ok[i])) for i, lay in enumerate(layouts)]


def estimate_one(cfg: EstimateConfig) -> pd.DataFrame:
    """One row: the best deployment's operating point, latencies and cost per million tokens.

    The operating point is the largest batch that fits, unless ``target.concurrency`` fixes the
    batch or ``target.tpot_ms`` / ``target.ttft_ms`` bound it. Deployment keys left null are chosen:
    every candidate layout is evaluated and the one with the most output tok/s per GPU that meets
    the target is reported (``candidates`` counts them).

    Raises:
      DoesNotFit: no allowed layout holds the weights plus one sequence of KV.
      InfeasibleProblem: no allowed layout meets the latency target.
    """
    require_float64("tokenmargin-estimate")
    hw, model, prec = cfg.hardware, cfg.model, cfg.precision
    check_precision_supported(hw, prec)
    eff = efficiency_for(cfg.efficiency, hw.family)
    wl = build_workload(cfg.isl, cfg.osl, cfg.cached_share)
    build_speculation(cfg.speculative)
    if cfg.isl + cfg.osl > model.max_context:
        raise ConfigError(f"isl + osl = {cfg.isl + cfg.osl:g} exceeds model '{model.key}' max_context "
                          f"{model.max_context}")
    t = cfg.target
    if t.concurrency is not None and (t.tpot_ms is not None or t.ttft_ms is not None):
        raise ConfigError("set either target.concurrency or target.tpot_ms/ttft_ms, not both")
    layouts = estimate_layouts(cfg)
    results = _evaluate(cfg, layouts, eff, wl, t)
    fitting = [r for r in results if bool(r[1].fits)]
    if not fitting:
        lay0 = layouts[0]
        dep = build_deployment(hw, model, prec, lay0)
        raise DoesNotFit(
            f"model '{model.key}' at {prec.key} does not fit {lay0.gpus}x {hw.key} ({lay0.label()}): "
            f"{float(weight_bytes_per_gpu(dep)) / 1e9:.1f} GB of weights per GPU + KV for one "
            f"{cfg.isl + cfg.osl:g}-token sequence exceed the usable {hw.memory_gb * cfg.efficiency.mem_util:.1f} GB "
            f"({cfg.efficiency.mem_util:.0%} of {hw.memory_gb:g} GB); use more GPUs or a lower precision")
    meeting = [r for r in fitting if r[2]]
    if not meeting:
        ones = _evaluate(cfg, [r[0] for r in fitting], eff, wl, type(t)(concurrency=1.0))
        lay, one, _ = min(ones, key=lambda r: float(r[1].tpot_s))
        raise InfeasibleProblem(
            f"no batch meets the latency target on '{hw.key}' ({model.key}, {prec.key}) in any of "
            f"{len(fitting)} deployments: the fastest, {lay.label()}, has TPOT {float(one.tpot_s) * 1e3:.2f} ms "
            f"and TTFT {float(one.ttft_s) * 1e3:.1f} ms at one sequence "
            f"(targets: tpot_ms={t.tpot_ms}, ttft_ms={t.ttft_ms})")
    lay, p, _ = max(meeting, key=lambda r: float(r[1].output_tok_s))
    if t.concurrency is not None:
        mode = f"concurrency={t.concurrency:g}"
    elif t.tpot_ms is not None or t.ttft_ms is not None:
        mode = f"slo(tpot_ms={t.tpot_ms}, ttft_ms={t.ttft_ms})"
    else:
        mode = "max_throughput"
    price = gpu_rent(hw, cfg.cost)
    gpu_s_decode = float(p.gpu_s_per_request - p.gpu_s_prefill)
    spec_name = (f"mtp-{lay.spec_k}" if lay.spec_k else
                 (f"draft-{cfg.speculative.draft_len}" if cfg.speculative.draft_len > 0 else "none"))
    row = {
        "model": model.key, "gpu": hw.key, "precision": prec.key, "deployment": lay.label(),
        "gpus": lay.gpus, "nodes": lay.nodes(hw), "tp": lay.tp, "dp": lay.dp, "ep": lay.ep,
        "disaggregated": lay.disaggregated, "speculation": spec_name, "candidates": len(layouts),
        "isl": cfg.isl, "osl": cfg.osl, "cached_share": cfg.cached_share, "operating_point": mode,
        "max_concurrency": math.floor(float(p.max_batch)), "batch": math.floor(float(p.batch) * 10) / 10,
        "output_tok_s_per_gpu": round(float(p.output_tok_s), 1),
        "input_tok_s_per_gpu": round(float(p.input_tok_s), 1),
        "tokens_per_s_per_user": round(1.0 / float(p.tpot_s), 2),
        "prefill_ms": round(float(p.prefill_s) * 1e3, 3),
        "prefill_gpu_share": round(float(p.gpu_s_prefill / p.gpu_s_per_request), 4),
        "kv_transfer_ms": round(float(p.kv_transfer_s) * 1e3, 3),
        "decode_step_ms": round(float(p.decode_step_s) * 1e3, 3),
        "tpot_ms": round(float(p.tpot_s) * 1e3, 3), "ttft_ms": round(float(p.ttft_s) * 1e3, 3),
        "bound": _bound(float(p.memory_bound_share)),
        "memory_bound_share": round(float(p.memory_bound_share), 3),
        "cost_mode": cfg.cost.mode, "usd_per_gpu_hour": round(price, 4),
        "usd_per_mtok_input": round(float(usd_per_mtok(price, p.gpu_s_prefill, cfg.isl)), 4),
        "usd_per_mtok_output": round(float(usd_per_mtok(price, gpu_s_decode, cfg.osl)), 4),
    }
    return pd.DataFrame([row])


def estimate_cases(cfg: EstimateConfig) -> tuple[pd.DataFrame, dict]:
    """Predict every row of ``cfg.cases`` and summarise the errors (median / mean APE)."""
    df = read_cases(cfg.cases)
    out = predict_frame(df, cfg.efficiency)
    return out, error_summary(out)


def available_summary() -> str:
    """One line per catalog, for error messages and the README."""
    return "; ".join(f"{g}: {', '.join(catalog.available(g))}" for g in ("hardware", "model", "precision"))
