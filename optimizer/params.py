"""Config dataclasses → arrays. The one place where catalog entries become JAX inputs.

Nothing below this module sees a DictConfig or a dataclass: kernels receive the NamedTuples of
arrays built here. All user-facing validation of a deployment (precision support, TP degree,
fit) happens here too, with messages that name the field and the accepted values.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from kernels.roofline import Deployment, Efficiency
from kernels.serving import Speculation, Workload
from optimizer import catalog
from optimizer.errors import ConfigError, UnsupportedPrecision
from optimizer.schema import (CostConfig, EfficiencyConfig, HardwareConfig, ModelConfig,
                              PrecisionConfig, SpeculativeConfig)

GB = 1e9
TB = 1e12


def stack_trees(trees: list):
    """Stack a list of same-structure pytrees (e.g. Deployments) along a new leading axis."""
    return jax.tree.map(lambda *a: jnp.stack(a), *trees)


def peak_tflops(hw: HardwareConfig, compute: str) -> float | None:
    """Dense tensor peak (TFLOPS) of ``hw`` for a math precision, or None when unsupported."""
    return getattr(hw.dense_tflops, compute)


def gpus_supporting(compute: str) -> list[str]:
    """Catalog GPUs with a tensor-core peak for ``compute``."""
    return [k for k in catalog.available("hardware")
            if peak_tflops(catalog.load_hardware(k), compute) is not None]


def check_precision_supported(hw: HardwareConfig, prec: PrecisionConfig) -> float:
    """The peak TFLOPS that applies, or :class:`UnsupportedPrecision` naming who supports it."""
    peak = peak_tflops(hw, prec.compute)
    if peak is None:
        raise UnsupportedPrecision(
            f"precision '{prec.key}' needs {prec.compute} tensor cores, which GPU '{hw.key}' "
            f"({hw.name}) does not have. GPUs that support {prec.key}: "
            f"{', '.join(gpus_supporting(prec.compute))}")
    return float(peak)


def attention_flops_coefficients(model: ModelConfig) -> tuple[float, float, float]:
    """(full-layer decode, window-layer, full-layer prefill) attention FLOPs per (query × context token).

    GQA/MHA: ``4 · layers · heads · head_dim`` (QKᵀ and AV, 2 FLOPs per MAC each), same in prefill.
    MLA decode (weights absorbed): ``2 · layers · heads · ((r + r_rope) + r)`` with ``r`` the cached
    latent rank; MLA prefill (un-absorbed, per-head keys/values): ``2 · layers · heads · (d_qk + d_v)``
    [DeepSeek-V3 report, arXiv 2412.19437, §2.1.1].
    """
    if model.attention == "mla":
        per_layer = 2.0 * model.num_attention_heads * (
            (model.mla_kv_lora_rank + model.mla_rope_dim) + model.mla_kv_lora_rank)
        prefill = 2.0 * model.num_attention_heads * (model.head_dim + (model.mla_v_head_dim or model.head_dim))
    elif model.attention == "gqa":
        per_layer = prefill = 4.0 * model.num_attention_heads * model.head_dim
    else:
        raise ConfigError(f"model '{model.key}': attention must be 'gqa' or 'mla', got '{model.attention}'")
    return (per_layer * model.full_attention_layers, per_layer * model.window_layers,
            prefill * model.full_attention_layers)


def validate_tp(hw: HardwareConfig, tp: int) -> None:
    """TP degree must be a positive power of two within one scale-up domain."""
    if tp < 1 or (tp & (tp - 1)) != 0:
        raise ConfigError(f"tp must be a power of two ≥ 1 (1, 2, 4, 8, ...), got {tp}")
    if tp > 1 and hw.scaleup_bw_gb_s <= 0:
        raise ConfigError(f"tp={tp} needs a scale-up link, but GPU '{hw.key}' has none "
                          f"(scaleup_bw_gb_s = 0); use tp=1")
    if tp > max(hw.scaleup_domain_gpus, 1):
        raise ConfigError(f"tp={tp} exceeds the scale-up domain of GPU '{hw.key}' "
                          f"({hw.scaleup_domain_gpus} GPUs); accepted tp values: "
                          f"{[2**i for i in range(int(math.log2(max(hw.scaleup_domain_gpus, 1))) + 1)]}")


def build_deployment(hw: HardwareConfig, model: ModelConfig, prec: PrecisionConfig, tp: int,
                     dtype=jnp.float64) -> Deployment:
    """Arrays for one (GPU, model, precision, TP) deployment.

    Raises:
      UnsupportedPrecision: the GPU lacks the precision's math roof.
      ConfigError: a bad TP degree.
    """
    peak = check_precision_supported(hw, prec)
    validate_tp(hw, tp)
    bpw, bkv = prec.bytes_per_weight, prec.bytes_per_kv / 2.0  # catalog KV is at 2 B/element
    routed = model.routed_expert_params_b * GB
    total = model.total_params_b * GB
    attn_full, attn_win, attn_prefill = attention_flops_coefficients(model)
    moe = model.num_experts > 0
    f = lambda x: jnp.asarray(x, dtype=dtype)  # noqa: E731
    return Deployment(
        weight_bytes=f(total * bpw), dense_weight_bytes=f((total - routed) * bpw),
        expert_weight_bytes=f(routed * bpw),
        num_experts=f(model.num_experts if moe else 1.0),
        experts_per_token=f(model.experts_per_token if moe else 1.0),
        active_params=f(model.active_params_b * GB),
        expert_active_params=f(routed * model.experts_per_token / model.num_experts if moe else 0.0),
        kv_full_bytes_per_token=f(model.kv_bytes_per_token_bf16 * bkv),
        kv_window_bytes_per_token=f(model.window_kv_bytes_per_token_bf16 * bkv),
        window_tokens=f(model.window_tokens), attn_full_flops=f(attn_full),
        attn_window_flops=f(attn_win), attn_prefill_flops=f(attn_prefill), layers=f(model.layers), hidden_size=f(model.hidden_size),
        hbm_bytes=f(hw.memory_gb * GB), mem_bw=f(hw.mem_bw_tb_s * TB), peak_flops=f(peak * TB),
        link_bw=f(hw.scaleup_bw_gb_s * GB), tp=f(tp))


def efficiency_for(eff: EfficiencyConfig, family: str, dtype=jnp.float64) -> Efficiency:
    """Efficiency factors of a GPU family (falls back to the defaults for unfitted families)."""
    f = lambda x: jnp.asarray(x, dtype=dtype)  # noqa: E731
    return Efficiency(bw_eff=f(eff.bw_eff.get(family, eff.default_bw_eff)),
                      flops_eff=f(eff.flops_eff.get(family, eff.default_flops_eff)),
                      prefill_flops_eff=f(eff.prefill_flops_eff.get(family, eff.default_prefill_flops_eff)),
                      moe_eff=f(eff.moe_eff), step_overhead_s=f(eff.step_overhead_ms / 1000.0), mem_util=f(eff.mem_util))


def build_workload(isl: float, osl: float, cached_share: float = 0.0, dtype=jnp.float64) -> Workload:
    """Validated workload arrays."""
    if not isl > 0:
        raise ConfigError(f"isl (input tokens per request) must be > 0, got {isl}")
    if not osl > 0:
        raise ConfigError(f"osl (output tokens per request) must be > 0, got {osl}")
    if not 0.0 <= cached_share < 1.0:
        raise ConfigError(f"cached_share must be in [0, 1), got {cached_share}")
    return Workload(jnp.asarray(isl, dtype), jnp.asarray(osl, dtype), jnp.asarray(cached_share, dtype))


def build_speculation(spec: SpeculativeConfig, dtype=jnp.float64) -> Speculation:
    """Validated speculative-decoding arrays."""
    if spec.draft_len < 0:
        raise ConfigError(f"speculative.draft_len must be ≥ 0 (0 = off), got {spec.draft_len}")
    if not 0.0 <= spec.acceptance <= 1.0:
        raise ConfigError(f"speculative.acceptance must be in [0, 1], got {spec.acceptance}")
    if spec.draft_cost_ratio < 0:
        raise ConfigError(f"speculative.draft_cost_ratio must be ≥ 0, got {spec.draft_cost_ratio}")
    return Speculation(jnp.asarray(float(spec.draft_len), dtype), jnp.asarray(spec.acceptance, dtype),
                       jnp.asarray(spec.draft_cost_ratio, dtype))


def gpu_hour_cost(hw: HardwareConfig, cost: CostConfig) -> float:
    """USD per GPU-hour for ``hw`` under the cost mode (rental price or TCO)."""
    from kernels.cost import tco_gpu_hour

    if cost.mode == "rental":
        price = cost.price_usd_per_gpu_hour if cost.price_usd_per_gpu_hour is not None else hw.price_usd_per_gpu_hour
        if not price > 0:
            raise ConfigError(f"cost.price_usd_per_gpu_hour must be > 0, got {price}")
        return float(price)
    if cost.mode == "tco":
        capex = cost.capex_usd_per_gpu if cost.capex_usd_per_gpu is not None else hw.capex_usd_per_gpu
        if capex is None:
            raise ConfigError(f"cost.mode=tco needs a capex for GPU '{hw.key}': the catalog has none, "
                              f"so set cost.capex_usd_per_gpu=<USD>")
        return float(tco_gpu_hour(capex, cost.depreciation_years, hw.power_w, cost.pue, cost.power_usd_per_kwh))
    raise ConfigError(f"cost.mode must be 'rental' or 'tco', got '{cost.mode}'")
