"""Config dataclasses → arrays. The one place where catalog entries become JAX inputs.

Nothing below this module sees a DictConfig or a dataclass: kernels receive the NamedTuples of
arrays built here. All user-facing validation of a deployment (precision support, TP degree,
fit) happens here too, with messages that name the field and the accepted values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kernels.roofline import Deployment, Efficiency
from kernels.serving import Speculation, Workload
from kernels.speculative import expected_tokens_per_step
from optimizer import catalog
from optimizer.errors import ConfigError, UnsupportedPrecision
from optimizer.schema import (GPU_FAMILIES, CostConfig, EfficiencyConfig, HardwareConfig, ModelConfig,
                              PrecisionConfig, SpeculativeConfig)

GB = 1e9
TB = 1e12


def stack_trees(trees: list, xp=jnp):
    """Stack a list of same-structure pytrees (e.g. Deployments) along a new leading axis (``xp``: jnp or np)."""
    return jax.tree.map(lambda *a: xp.stack(a), *trees)


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


@dataclass(frozen=True)
class Layout:
    """How one replica is laid out over GPUs (host-side, hashable).

    ``gpus`` per replica; attention/dense tensor parallelism ``tp`` (dividing ``gpus``; the rest are
    attention data-parallel ranks); routed experts expert-parallel ``ep`` ways; prefill on a separate
    pool (``disaggregated``); ``spec_k`` draft tokens of the model's MTP head (0 = off).
    """

    gpus: int
    tp: int
    ep: int = 1
    disaggregated: bool = False
    spec_k: int = 0

    @property
    def dp(self) -> int:
        return self.gpus // self.tp

    def nodes(self, hw: HardwareConfig) -> int:
        """Servers the replica spans (NVL72 racks count their trays of ``gpus_per_node`` GPUs)."""
        return self.nodes_of(hw.gpus_per_node)

    def nodes_of(self, gpus_per_node: int) -> int:
        return max(1, math.ceil(self.gpus / max(gpus_per_node, 1)))

    def label(self) -> str:
        """Short human label, e.g. ``16 GPU TP1 DP16 EP16 disagg MTP-3``."""
        parts = [f"{self.gpus} GPU", f"TP{self.tp}"]
        if self.dp > 1:
            parts.append(f"DP{self.dp}")
        if self.ep > 1:
            parts.append(f"EP{self.ep}")
        if self.disaggregated:
            parts.append("disagg")
        if self.spec_k:
            parts.append(f"MTP-{self.spec_k}")
        return " ".join(parts)


def scaleup(hw: HardwareConfig) -> tuple[float, int]:
    """(bandwidth per GPU per direction GB/s, GPUs) of the domain TP can use: NVLink / xGMI, else PCIe."""
    if hw.scaleup_bw_gb_s > 0:
        return hw.scaleup_bw_gb_s, max(int(hw.scaleup_domain_gpus), 1)
    if hw.pcie_bw_gb_s > 0:
        return hw.pcie_bw_gb_s, max(int(hw.gpus_per_node), 1)
    return 0.0, 1


def expert_slots(num_experts: int, ep: int) -> float:
    """Expert slots a replica holds per routed expert: ``ceil(E / ep) · ep / E`` (1 where ``ep`` divides
    ``E``; 1 for a dense model). Where it does not, every EP rank still gets ``ceil(E / ep)`` slots and
    the extra ones hold redundant copies of busy experts — DeepSeek-V3's decode runs EP144 with 2 slots
    per GPU for its 256 experts (32 redundant) — so they cost memory and, at large batch, the bandwidth
    of reading them; the load balance they buy is the one ``ep_imbalance`` describes. Redundant copies
    beyond that (DeepSeek's prefill: EP32 with 9 slots per GPU, where 8 would do) are not modelled."""
    if num_experts <= 0 or ep <= 1:
        return 1.0
    return math.ceil(num_experts / ep) * ep / num_experts


def validate_layout(hw: HardwareConfig, model: ModelConfig, layout: Layout) -> None:
    """Check a layout against the GPU's links and the model's experts (messages name the accepted values)."""
    g, tp, ep = layout.gpus, layout.tp, layout.ep
    if g < 1 or tp < 1 or ep < 1:
        raise ConfigError(f"deployment gpus={g}, tp={tp}, ep={ep}: each must be an integer >= 1")
    if g % tp:
        raise ConfigError(f"tp={tp} must divide the replica's gpus={g} (the rest are attention data-parallel "
                          f"ranks); accepted tp values: {[d for d in range(1, g + 1) if g % d == 0]}")
    if model.num_attention_heads % tp:
        raise ConfigError(f"tp={tp} must divide model '{model.key}''s {model.num_attention_heads} attention heads; "
                          f"accepted tp values: {[d for d in range(1, g + 1) if g % d == 0 and model.num_attention_heads % d == 0]}")
    if model.num_experts == 0 and ep > 1:
        raise ConfigError(f"ep={ep}: model '{model.key}' is dense (no routed experts); use ep=1")
    if model.num_experts == 0 and tp != g:
        raise ConfigError(f"model '{model.key}' is dense: its replica is tensor-parallel over all its GPUs, so "
                          f"tp must equal gpus ({g}); got tp={tp} (pipeline parallelism is not modelled)")
    if ep > 1 and g % ep:
        raise ConfigError(f"ep={ep} must divide the replica's gpus={g}; accepted ep values: "
                          f"{[d for d in range(1, g + 1) if g % d == 0]}")
    bw, domain = scaleup(hw)
    if g > 1 and bw <= 0 and hw.scaleout_bw_gb_s <= 0:
        raise ConfigError(f"a {g}-GPU replica needs a link between GPUs, but GPU '{hw.key}' has no scale-up, PCIe "
                          f"or scale-out bandwidth in the catalog; use 1 GPU per replica")
    if g > domain and hw.scaleout_bw_gb_s <= 0:
        raise ConfigError(f"a {g}-GPU replica spans more than GPU '{hw.key}''s {domain}-GPU scale-up domain but the "
                          f"catalog has no scale-out bandwidth for it (scaleout_bw_gb_s = 0); use at most {domain} GPUs")
    if layout.spec_k:
        if not model.mtp_layers or not model.mtp_accepted_tokens:
            raise ConfigError(f"MTP speculation needs a model with an MTP head and sourced acceptance; "
                              f"'{model.key}' has none (mtp_layers={model.mtp_layers})")
        if not 1 <= layout.spec_k <= len(model.mtp_accepted_tokens):
            raise ConfigError(f"MTP draft length {layout.spec_k} for '{model.key}': accepted values "
                              f"1..{len(model.mtp_accepted_tokens)} (sourced acceptance lengths)")


def validate_tp(hw: HardwareConfig, tp: int) -> None:
    """TP degree must be a positive integer and stay within the GPU's scale-up domain (or PCIe node)."""
    bw, domain = scaleup(hw)
    if tp < 1:
        raise ConfigError(f"tp must be an integer >= 1, got {tp}")
    if tp > 1 and bw <= 0:
        raise ConfigError(f"tp={tp} needs a link between GPUs, but GPU '{hw.key}' has no scale-up or PCIe "
                          f"bandwidth in the catalog; use tp=1")


def attention_tflops(hw: HardwareConfig, prec: PrecisionConfig, peak: float) -> float:
    """Math roof of attention kernels: BF16 (never above the precision's own roof).

    Decode and prefill attention kernels (FlashAttention / FlashInfer / TensorRT-LLM FMHA / FlashMLA)
    compute in 16-bit, dequantising an FP8 KV cache on load, so FP8 / FP4 weights do not speed up
    attention math. (Fitting both measured regimes with an FP8 attention roof instead gave a larger
    median error in both when it was tried, issue 9.)
    """
    bf16 = hw.dense_tflops.bf16
    return float(min(bf16 if bf16 is not None else peak, peak))


def build_deployment(hw: HardwareConfig, model: ModelConfig, prec: PrecisionConfig, layout: Layout | int,
                     dtype=jnp.float64) -> Deployment:
    """Arrays for one (GPU, model, precision, layout) deployment (an int layout = plain TP over that many GPUs).

    With ``dtype=None`` the leaves are NumPy float64 scalars (cheap to build and stack host-side).

    Raises:
      UnsupportedPrecision: the GPU lacks the precision's math roof.
      ConfigError: a bad layout.
    """
    if isinstance(layout, int):
        layout = Layout(gpus=layout, tp=layout, ep=1)
        validate_tp(hw, layout.tp)
    peak = check_precision_supported(hw, prec)
    validate_layout(hw, model, layout)
    bpw, bkv = prec.bytes_per_weight, prec.bytes_per_kv / 2.0  # catalog KV is at 2 B/element
    routed = model.routed_expert_params_b * GB
    total = model.total_params_b * GB
    slots = expert_slots(model.num_experts, layout.ep)
    attn_full, attn_win, attn_prefill = attention_flops_coefficients(model)
    moe = model.num_experts > 0
    link, domain = scaleup(hw)
    if dtype is None:
        f = np.float64
    else:
        f = lambda x: jnp.asarray(x, dtype=dtype)  # noqa: E731
    return Deployment(
        weight_bytes=f((total - routed + routed * slots) * bpw), dense_weight_bytes=f((total - routed) * bpw),
        expert_weight_bytes=f(routed * slots * bpw),
        num_experts=f(model.num_experts if moe else 1.0),
        experts_per_token=f(model.experts_per_token if moe else 1.0),
        active_params=f(model.active_params_b * GB),
        expert_active_params=f(routed * model.experts_per_token / model.num_experts if moe else 0.0),
        kv_full_bytes_per_token=f(model.kv_bytes_per_token_bf16 * bkv),
        kv_window_bytes_per_token=f(model.window_kv_bytes_per_token_bf16 * bkv),
        window_tokens=f(model.window_tokens), attn_full_flops=f(attn_full),
        attn_window_flops=f(attn_win), attn_prefill_flops=f(attn_prefill), layers=f(model.layers),
        moe_layers=f((model.moe_layers or model.layers) if moe else 0.0), hidden_size=f(model.hidden_size),
        kv_heads=f(1.0 if model.attention == "mla" else max(model.num_kv_heads, 1)),
        hbm_bytes=f(hw.memory_gb * GB), mem_bw=f(hw.mem_bw_tb_s * TB), peak_flops=f(peak * TB),
        attn_peak_flops=f(attention_tflops(hw, prec, peak) * TB),
        link_bw=f(link * GB), scaleout_bw=f(hw.scaleout_bw_gb_s * GB), domain_gpus=f(domain),
        gpus=f(layout.gpus), tp=f(layout.tp), ep=f(layout.ep))


def build_mtp(model: ModelConfig, k: int, dtype=jnp.float64) -> Speculation:
    """MTP speculation with ``k`` drafts from the model's sourced acceptance lengths.

    A draft step runs the ``mtp_layers`` MTP modules, so its body costs ``mtp_layers / layers`` of a
    target step's body (plus the fixed per-step overheads, :func:`kernels.serving.operating_point`).
    """
    f = np.float64 if dtype is None else (lambda x: jnp.asarray(x, dtype))  # noqa: E731
    if k == 0:
        return Speculation(f(0.0), f(1.0), f(0.0))
    if not model.mtp_accepted_tokens or not 1 <= k <= len(model.mtp_accepted_tokens):
        raise ConfigError(f"speculative.method=mtp with draft_len={k}: model '{model.key}' has sourced MTP "
                          f"acceptance for draft lengths 1..{len(model.mtp_accepted_tokens)}")
    return Speculation(f(float(k)), f(model.mtp_accepted_tokens[k - 1]), f(model.mtp_layers / model.layers))


def transferred(fitted: dict[str, float], default: float, shares: dict[str, float], family: str) -> float:
    """One efficiency factor of GPU ``family``: its fitted value; else, where ``family`` and some fitted
    families have a measured microbenchmark share (achieved / catalog peak), the mean over those fitted
    families f of ``fitted[f] × shares[family] / shares[f]`` (as efficient relative to its own
    microbenchmark as they are to theirs), at most 1; else ``default``."""
    if family in fitted:
        return float(fitted[family])
    ref = [f for f in fitted if f in shares]
    if family not in shares or not ref:
        return float(default)
    return min(1.0, sum(fitted[f] * shares[family] / shares[f] for f in ref) / len(ref))


def family_factors(eff: EfficiencyConfig, family: str) -> tuple[float, float, float]:
    """``(bw_eff, flops_eff, prefill_flops_eff)`` of GPU ``family``: bandwidth carried by ``hbm_share``,
    both compute factors by ``matmul_share`` to families absent from the fit (:func:`transferred`)."""
    return (transferred(eff.bw_eff, eff.default_bw_eff, eff.hbm_share, family),
            transferred(eff.flops_eff, eff.default_flops_eff, eff.matmul_share, family),
            transferred(eff.prefill_flops_eff, eff.default_prefill_flops_eff, eff.matmul_share, family))


def efficiency_for(eff: EfficiencyConfig, family: str, dtype=jnp.float64) -> Efficiency:
    """Efficiency factors of a GPU family (unfitted families: :func:`family_factors`)."""
    f = lambda x: jnp.asarray(x, dtype=dtype)  # noqa: E731
    bw, fl, pf = family_factors(eff, family)
    return Efficiency(bw_eff=f(bw), flops_eff=f(fl), prefill_flops_eff=f(pf),
                      moe_eff=f(eff.moe_eff), step_overhead_s=f(eff.step_overhead_ms / 1000.0), mem_util=f(eff.mem_util),
                      layer_overhead_s=f(eff.layer_overhead_us * 1e-6),
                      moe_layer_overhead_s=f(eff.moe_layer_overhead_us * 1e-6),
                      collective_latency_s=f(eff.collective_latency_us * 1e-6), ep_imbalance=f(eff.ep_imbalance))


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
    tokens = expected_tokens_per_step(jnp.asarray(spec.acceptance, dtype), jnp.asarray(float(spec.draft_len), dtype))
    return Speculation(jnp.asarray(float(spec.draft_len), dtype), tokens, jnp.asarray(spec.draft_cost_ratio, dtype))


def gpu_rent(hw: HardwareConfig, cost: CostConfig, override: float | None = None) -> float:
    """USD per GPU-hour of ``hw``: the one place a GPU's rent is decided.

    Precedence: a per-GPU ``override`` (``fleet.price_usd_per_gpu_hour.<gpu>``), then the fleet-wide
    ``cost.price_usd_per_gpu_hour``, then the cost mode: ``rental`` the catalog's price, ``tco``
    capex over the depreciation period plus power. 0 means free; ``None`` means "not set".
    """
    from kernels.cost import tco_gpu_hour

    for where, price in (("price_usd_per_gpu_hour." + hw.key, override),
                         ("cost.price_usd_per_gpu_hour", cost.price_usd_per_gpu_hour)):
        if price is None:
            continue
        if not (isinstance(price, (int, float)) and math.isfinite(price) and price >= 0):
            raise ConfigError(f"{where} = {price}: accepted a number >= 0 (0 = free) or null "
                              f"(the cost mode's price of '{hw.key}')")
        return float(price)
    if cost.mode == "rental":
        return float(hw.price_usd_per_gpu_hour)
    if cost.mode == "tco":
        capex = cost.capex_usd_per_gpu if cost.capex_usd_per_gpu is not None else hw.capex_usd_per_gpu
        if capex is None:
            raise ConfigError(f"cost.mode=tco needs a capex for GPU '{hw.key}': the catalog has none, "
                              f"so set cost.capex_usd_per_gpu=<USD>")
        return float(tco_gpu_hour(capex, cost.depreciation_years, hw.power_w, cost.pue, cost.power_usd_per_kwh))
    raise ConfigError(f"cost.mode must be 'rental' or 'tco', got '{cost.mode}'")


class EfficiencyTable(NamedTuple):
    """Efficiency factors per GPU family (leading axis = family, GPU_FAMILIES order)."""

    bw_eff: jnp.ndarray  # (n_family,)
    flops_eff: jnp.ndarray  # (n_family,)
    prefill_flops_eff: jnp.ndarray  # (n_family,)
    moe_eff: jnp.ndarray  # ()
    step_overhead_s: jnp.ndarray  # ()
    mem_util: jnp.ndarray  # ()
    layer_overhead_s: jnp.ndarray  # ()
    moe_layer_overhead_s: jnp.ndarray  # ()
    collective_latency_s: jnp.ndarray  # ()
    ep_imbalance: jnp.ndarray  # ()


def efficiency_table(eff: EfficiencyConfig, dtype=jnp.float64, xp=jnp) -> EfficiencyTable:
    """Per-family arrays from an :class:`EfficiencyConfig` (``xp``: ``jnp``, or ``np`` for host-side inputs)."""
    bw, fl, pf = zip(*(family_factors(eff, f) for f in GPU_FAMILIES))
    return EfficiencyTable(xp.asarray(bw, dtype), xp.asarray(fl, dtype), xp.asarray(pf, dtype),
                           xp.asarray(eff.moe_eff, dtype), xp.asarray(eff.step_overhead_ms / 1000.0, dtype),
                           xp.asarray(eff.mem_util, dtype), xp.asarray(eff.layer_overhead_us * 1e-6, dtype),
                           xp.asarray(eff.moe_layer_overhead_us * 1e-6, dtype),
                           xp.asarray(eff.collective_latency_us * 1e-6, dtype), xp.asarray(eff.ep_imbalance, dtype))


def efficiency_at(table: EfficiencyTable, family) -> Efficiency:
    """The :class:`Efficiency` of GPU-family index (or index array) ``family``; shared factors broadcast."""
    f = jnp.asarray(family)
    table = jax.tree.map(jnp.asarray, table)  # host-side NumPy factors index like traced ones
    b = lambda x: jnp.broadcast_to(x, f.shape)  # noqa: E731
    return Efficiency(table.bw_eff[f], table.flops_eff[f], table.prefill_flops_eff[f], b(table.moe_eff),
                      b(table.step_overhead_s), b(table.mem_util), b(table.layer_overhead_s), b(table.moe_layer_overhead_s),
                      b(table.collective_latency_s), b(table.ep_imbalance))
