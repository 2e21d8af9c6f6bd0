"""`tokenmargin-estimate`: throughput, latency and $/Mtok of one deployment, or of a cases CSV.

Hydra-free: :func:`estimate_one` and :func:`estimate_cases` take typed dataclasses and return
DataFrames, so tests and notebooks call them directly.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import pandas as pd

from kernels.cost import usd_per_mtok
from kernels.serving import max_throughput_point, operating_point, slo_batch
from optimizer import catalog
from optimizer.cases import error_summary, predict_frame, read_cases
from optimizer.errors import ConfigError, DoesNotFit, InfeasibleProblem
from optimizer.params import (build_deployment, build_speculation, build_workload, efficiency_for,
                              gpu_hour_cost)
from optimizer.schema import EstimateConfig


def _bound(mem_share: float) -> str:
    return "memory" if mem_share >= 0.5 else "compute"


def estimate_one(cfg: EstimateConfig) -> pd.DataFrame:
    """One row: the deployment's operating point, latencies and cost per million tokens.

    The operating point is the largest batch that fits, unless ``target.concurrency`` fixes the
    batch or ``target.tpot_ms`` / ``target.ttft_ms`` bound it.

    Raises:
      DoesNotFit: the weights or one sequence of KV do not fit ``tp`` GPUs.
      InfeasibleProblem: no batch meets the latency target.
    """
    hw, model, prec = cfg.hardware, cfg.model, cfg.precision
    dep = build_deployment(hw, model, prec, cfg.tp)
    eff = efficiency_for(cfg.efficiency, hw.family)
    wl = build_workload(cfg.isl, cfg.osl, cfg.cached_share)
    spec = build_speculation(cfg.speculative)
    if cfg.isl + cfg.osl > model.max_context:
        raise ConfigError(f"isl + osl = {cfg.isl + cfg.osl:g} exceeds model '{model.key}' max_context "
                          f"{model.max_context}")
    t = cfg.target
    if t.concurrency is not None and (t.tpot_ms is not None or t.ttft_ms is not None):
        raise ConfigError("set either target.concurrency or target.tpot_ms/ttft_ms, not both")
    if t.concurrency is not None:
        if not t.concurrency >= 1:
            raise ConfigError(f"target.concurrency must be ≥ 1, got {t.concurrency}")
        p = operating_point(dep, eff, wl, jnp.asarray(float(t.concurrency)), spec)
        mode = f"concurrency={t.concurrency:g}"
    elif t.tpot_ms is not None or t.ttft_ms is not None:
        tpot = t.tpot_ms / 1000.0 if t.tpot_ms is not None else math.inf
        ttft = t.ttft_ms / 1000.0 if t.ttft_ms is not None else math.inf
        b, ok = slo_batch(dep, eff, wl, jnp.asarray(tpot), jnp.asarray(ttft), spec)
        p = operating_point(dep, eff, wl, b, spec)
        if bool(p.fits) and not bool(ok):
            one = operating_point(dep, eff, wl, jnp.asarray(1.0), spec)
            raise InfeasibleProblem(
                f"no batch meets the latency target on {cfg.tp}x {hw.key} ({model.key}, {prec.key}): "
                f"even one sequence has TPOT {float(one.tpot_s) * 1e3:.2f} ms "
                f"and TTFT {float(one.ttft_s) * 1e3:.1f} ms "
                f"(targets: tpot_ms={t.tpot_ms}, ttft_ms={t.ttft_ms})")
        mode = f"slo(tpot_ms={t.tpot_ms}, ttft_ms={t.ttft_ms})"
    else:
        p = max_throughput_point(dep, eff, wl, spec)
        mode = "max_throughput"
    if not bool(p.fits):
        weights_gb = float(dep.weight_bytes) / 1e9
        usable = cfg.tp * hw.memory_gb * cfg.efficiency.mem_util
        raise DoesNotFit(
            f"model '{model.key}' at {prec.key} does not fit {cfg.tp}x {hw.key}: weights {weights_gb:.1f} GB "
            f"+ KV for one {cfg.isl + cfg.osl:g}-token sequence exceed the usable {usable:.1f} GB "
            f"({cfg.efficiency.mem_util:.0%} of {cfg.tp}x{hw.memory_gb:g} GB); raise tp or pick a lower precision")
    price = gpu_hour_cost(hw, cfg.cost)
    gpu_s_decode = float(p.gpu_s_per_request - p.gpu_s_prefill)
    row = {
        "model": model.key, "gpu": hw.key, "precision": prec.key, "tp": cfg.tp,
        "isl": cfg.isl, "osl": cfg.osl, "cached_share": cfg.cached_share, "operating_point": mode,
        "max_concurrency": math.floor(float(p.max_batch)), "batch": math.floor(float(p.batch) * 10) / 10,
        "output_tok_s_per_gpu": round(float(p.output_tok_s), 1),
        "input_tok_s_per_gpu": round(float(p.input_tok_s), 1),
        "prefill_ms": round(float(p.prefill_s) * 1e3, 3),
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
