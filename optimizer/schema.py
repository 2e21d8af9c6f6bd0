"""Structured-config schemas (dataclasses) for every catalog and app config.

Every YAML file under ``conf/`` extends one of these schemas through its defaults list, so that a
misspelt key or a wrong type fails at compose time with Hydra's own message. The schemas are stored
in Hydra's ConfigStore by :func:`register_configs` under names distinct from the YAML files
(``base_hardware``, ``base_model``, ...), which is the pattern Hydra 1.3 recommends.

Nothing below :mod:`optimizer.params` ever sees a ``DictConfig``: these dataclasses are turned into
arrays there and only there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from omegaconf import MISSING

PRECISION_KEYS: tuple[str, ...] = ("bf16", "fp8", "int8", "int4", "fp4")
"""Canonical precision keys, in the order used for every array axis over precisions."""

GPU_FAMILIES: tuple[str, ...] = ("ampere", "ada", "hopper", "blackwell", "cdna3", "cdna4")
"""GPU architecture families; calibration may fit one efficiency factor per family."""

ACCEPTS = "accepts"
"""Key of a field's metadata holding its :class:`Accepts` (read by :mod:`optimizer.validate`)."""


@dataclass(frozen=True)
class Accepts:
    """The values one config field accepts, declared next to the field (``metadata={ACCEPTS: ...}``).

    Bounds (``gt``/``ge``/``lt``/``le``), whole numbers only (``integer``) or one of ``choices``.
    For a map or a list the rule applies to each value. Every number must also be finite; ``null``
    is accepted exactly where the field is ``Optional`` (its meaning is documented on the field).
    """

    gt: Optional[float] = None
    ge: Optional[float] = None
    lt: Optional[float] = None
    le: Optional[float] = None
    integer: bool = False
    choices: tuple = ()

    def describe(self) -> str:
        """The accepted values in words, e.g. ``a number in (0, 1]`` or ``one of 'grid', 'sample'``."""
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        kind = "an integer" if self.integer else "a number"
        lo = f"({self.gt:g}" if self.gt is not None else (f"[{self.ge:g}" if self.ge is not None else None)
        hi = f"{self.lt:g})" if self.lt is not None else (f"{self.le:g}]" if self.le is not None else None)
        if lo and hi:
            return f"{kind} in {lo}, {hi}"
        if lo:
            return f"{kind} {'>' if lo[0] == '(' else '>='} {lo[1:]}"
        if hi:
            return f"{kind} {'<' if hi[-1] == ')' else '<='} {hi[:-1]}"
        return f"a finite {kind[2:] if self.integer else 'number'}"

    def accepts(self, v: Any) -> bool:
        """Whether the (non-null) value ``v`` is accepted."""
        if self.choices:
            return v in self.choices
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        return bool(self.accepts_array(np.asarray(float(v))))

    def accepts_array(self, v: np.ndarray) -> np.ndarray:
        """Elementwise :meth:`accepts` of a float array (NaN = not accepted), e.g. a column of a cases CSV."""
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(v)
            for bound, test in ((self.gt, np.greater), (self.ge, np.greater_equal), (self.lt, np.less),
                                (self.le, np.less_equal)):
                if bound is not None:
                    ok &= test(v, bound)
            if self.integer:
                ok &= np.floor(v) == v
        return ok


def accepts(default: Any = MISSING, *, default_factory: Any = None, **rule: Any) -> Any:
    """A dataclass field with its accepted values, e.g. ``mem_util: float = accepts(0.9, gt=0, le=1)``."""
    meta = {ACCEPTS: Accepts(**rule)}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


POSITIVE = {"gt": 0.0}
NON_NEGATIVE = {"ge": 0.0}
FRACTION = {"gt": 0.0, "le": 1.0}  # a share in (0, 1]
SHARE = {"ge": 0.0, "le": 1.0}  # a share in [0, 1]
COUNT = {"ge": 1, "integer": True}  # a count >= 1


def catalog_keys(group: str) -> list[str]:
    """The YAML stems of ``conf/<group>`` (used to key per-GPU maps by every catalog GPU)."""
    from pathlib import Path

    return sorted(p.stem for p in (Path(__file__).resolve().parent.parent / "conf" / group).glob("*.yaml"))


@dataclass
class DenseTflops:
    """Dense (no sparsity) tensor-core peak per math precision, TFLOPS (TOPS for int8).

    ``None`` means the GPU has no tensor-core support for that precision.
    """

    bf16: Optional[float] = accepts(None, **POSITIVE)
    fp8: Optional[float] = accepts(None, **POSITIVE)
    int8: Optional[float] = accepts(None, **POSITIVE)
    fp4: Optional[float] = accepts(None, **POSITIVE)


@dataclass
class HardwareConfig:
    """One GPU type. Every number is sourced in the YAML file that fills it."""

    key: str = MISSING  # canonical key, e.g. "h200-sxm"
    name: str = MISSING  # full product name
    family: str = MISSING  # one of GPU_FAMILIES
    memory_gb: float = accepts(**POSITIVE)  # HBM / GDDR capacity per GPU, GB (1e9 bytes)
    mem_bw_tb_s: float = accepts(**POSITIVE)  # memory bandwidth per GPU, TB/s (1e12 bytes/s)
    dense_tflops: DenseTflops = field(default_factory=DenseTflops)
    power_w: float = accepts(**POSITIVE)  # board power (TDP/TGP), W
    scaleup_bw_gb_s: float = accepts(0.0, **NON_NEGATIVE)  # scale-up link bandwidth per GPU per direction, GB/s (0 = PCIe only)
    scaleup_domain_gpus: int = accepts(1, **COUNT)  # GPUs in one scale-up (NVLink / xGMI) domain
    gpus_per_node: int = accepts(8, **COUNT)  # GPUs per server (the PCIe node for GPUs without a scale-up link)
    pcie_bw_gb_s: float = accepts(0.0, **NON_NEGATIVE)  # host PCIe bandwidth per GPU per direction, GB/s (TP over PCIe when no scale-up link)
    scaleout_bw_gb_s: float = accepts(0.0, **NON_NEGATIVE)  # scale-out (InfiniBand / RoCE NIC) bandwidth per GPU per direction, GB/s
    interconnect_source: str = ""  # where the PCIe / scale-out figures come from
    price_usd_per_gpu_hour: float = accepts(**NON_NEGATIVE)  # default rent of a GPU paid around the clock (reserved / committed), USD per GPU-hour
    price_date: str = MISSING  # date of that price
    price_source: str = MISSING  # where that price comes from
    on_demand_usd_per_gpu_hour: Optional[float] = accepts(None, **NON_NEGATIVE)  # rent of a GPU paid per hour used (None = not sourced: no on-demand)
    on_demand_source: str = ""  # where that price comes from, with date
    capex_usd_per_gpu: Optional[float] = accepts(None, **NON_NEGATIVE)  # purchase price per GPU incl. server share, USD (None = unknown)
    capex_source: str = ""
    spec_source: str = MISSING  # where the specs come from
    notes: str = ""


@dataclass
class QualityRetention:
    """Quality retained relative to BF16 (fraction, BF16 = 1.0) per precision."""

    bf16: float = accepts(1.0, **FRACTION)
    fp8: float = accepts(**FRACTION)
    int8: float = accepts(**FRACTION)
    int4: float = accepts(**FRACTION)
    fp4: float = accepts(**FRACTION)


@dataclass
class ModelConfig:
    """One LLM architecture. Every number is sourced in the YAML file that fills it."""

    key: str = MISSING  # canonical key, e.g. "llama-3p3-70b"
    name: str = MISSING
    total_params_b: float = accepts(**POSITIVE)  # all weights incl. every MoE expert, billions
    active_params_b: float = accepts(**POSITIVE)  # weights used per token (FLOPs), billions
    routed_expert_params_b: float = accepts(0.0, **NON_NEGATIVE)  # weights in routed experts (all layers), billions; 0 for dense
    num_experts: int = accepts(0, ge=0, integer=True)  # routed experts per MoE layer (0 = dense)
    experts_per_token: int = accepts(0, ge=0, integer=True)  # routed experts chosen per token (top-k)
    shared_experts: int = 0  # always-active shared experts per MoE layer
    layers: int = accepts(**COUNT)
    hidden_size: int = accepts(**COUNT)
    num_attention_heads: int = accepts(**COUNT)
    num_kv_heads: int = accepts(ge=0, integer=True)  # 0 for MLA (latent shared by all heads)
    head_dim: int = accepts(**COUNT)  # q/k head dim (for MLA: the nope+rope qk dim)
    attention: str = accepts("gqa", choices=("gqa", "mla"))  # "gqa" or "mla"
    mla_kv_lora_rank: int = 0  # MLA only: cached latent size
    mla_rope_dim: int = 0  # MLA only: cached decoupled RoPE key size
    mla_v_head_dim: int = 0  # MLA only: value head dim (prefill runs un-absorbed attention)
    full_attention_layers: int = accepts(ge=0, integer=True)  # layers attending to the whole context
    window_layers: int = 0  # sliding-window / chunked-attention layers
    window_tokens: int = 0  # their window (or chunk) length, tokens
    kv_bytes_per_token_bf16: float = accepts(**NON_NEGATIVE)  # KV bytes per context token over the full-attention layers at 2 B/element
    window_kv_bytes_per_token_bf16: float = 0.0  # KV bytes per token over window layers at 2 B/element (capped at window_tokens)
    max_context: int = accepts(**COUNT)  # tokens
    moe_layers: int = 0  # layers with routed experts (0 = every layer of an MoE model)
    mtp_layers: int = 0  # native multi-token-prediction modules (DeepSeek-V3: 1), drafted autoregressively
    mtp_accepted_tokens: list[float] = accepts(default_factory=list, ge=1.0)  # E[tokens per verify round] for k = 1, 2, ... drafts
    mtp_source: str = ""  # where the MTP acceptance figures come from
    quality: QualityRetention = field(default_factory=QualityRetention)
    quality_source: str = MISSING  # which quant_quality.csv rows / evidence were used
    source: str = MISSING
    notes: str = ""


@dataclass
class PrecisionConfig:
    """A serving precision (weights / activations / KV cache)."""

    key: str = MISSING  # one of PRECISION_KEYS
    bytes_per_weight: float = accepts(**POSITIVE)  # incl. quantisation scales
    bytes_per_kv: float = accepts(**POSITIVE)  # bytes per KV-cache element
    compute: str = accepts(choices=("bf16", "fp8", "int8", "fp4"))  # which DenseTflops field is the math roof: bf16 | fp8 | int8 | fp4
    weight_only: bool = False  # True: weights dequantised to 16-bit before the matmul
    source: str = MISSING
    notes: str = ""


@dataclass
class EfficiencyConfig:
    """Calibrated efficiency factors of the roofline model (fitted by tokenmargin-calibrate).

    Per-family factors are keyed by GPU family. A family absent from the fit takes the fitted
    families' factors scaled by its measured microbenchmark share relative to theirs (``hbm_share``
    for bandwidth, ``matmul_share`` for both compute factors; :func:`optimizer.params.family_factors`),
    or ``default_*`` where no share relates it to a fitted family.
    """

    bw_eff: dict[str, float] = accepts(default_factory=dict, **FRACTION)  # achieved / peak memory bandwidth, per family
    flops_eff: dict[str, float] = accepts(default_factory=dict, **FRACTION)  # achieved / peak tensor FLOPS in decode, per family
    prefill_flops_eff: dict[str, float] = accepts(default_factory=dict, **FRACTION)  # achieved / peak FLOPS in prefill, per family
    default_bw_eff: float = accepts(0.8, **FRACTION)
    default_flops_eff: float = accepts(0.6, **FRACTION)
    default_prefill_flops_eff: float = accepts(0.6, **FRACTION)
    moe_eff: float = accepts(1.0, **FRACTION)  # efficiency of routed-expert GEMMs relative to dense GEMMs (all families)
    step_overhead_ms: float = accepts(1.0, **NON_NEGATIVE)  # fixed per decode step (scheduling, sampling), ms
    mem_util: float = accepts(0.9, **FRACTION)  # usable share of HBM for weights + KV cache
    layer_overhead_us: float = accepts(0.0, **NON_NEGATIVE)  # fixed per layer per decode step (kernel launches, syncs), microseconds
    moe_layer_overhead_us: float = accepts(0.0, **NON_NEGATIVE)  # extra per MoE layer per step (router, top-k, permute, grouped GEMM launches), us
    collective_latency_us: float = accepts(0.0, **NON_NEGATIVE)  # latency of one collective (all-reduce, EP dispatch or combine), microseconds
    ep_imbalance: float = accepts(1.0, ge=1.0)  # busiest / mean tokens per expert-parallel rank at large EP (>= 1)
    matmul_share: dict[str, float] = accepts(default_factory=dict, **FRACTION)  # measured BF16 matmul TFLOPS / catalog peak, per family (carries compute factors to unfitted families)
    hbm_share: dict[str, float] = accepts(default_factory=dict, **FRACTION)  # measured HBM (STREAM) bandwidth / catalog peak, per family (carries bw_eff to unfitted families)
    source: str = ""  # command and data that produced the values


@dataclass
class WorkloadConfig:
    """The traffic a deployment serves."""

    isl: float = accepts(1000.0, **POSITIVE)  # mean input (prompt) tokens per request
    osl: float = accepts(1000.0, **POSITIVE)  # mean output tokens per request
    cached_share: float = accepts(0.0, ge=0.0, lt=1.0)  # share of input tokens served from the prefix cache (skip prefill)


@dataclass
class SpeculativeConfig:
    """Speculative decoding.

    ``method``: null = the best of off and the model's MTP head (where its acceptance is sourced);
    ``none``; ``mtp`` (the model's MTP head, ``draft_len`` drafts or the best of 1 and 3 when 0);
    ``draft`` (a draft model or Eagle-style head with iid ``acceptance`` and ``draft_cost_ratio``).
    """

    method: Optional[str] = accepts(None, choices=("none", "mtp", "draft"))  # null | none | mtp | draft
    draft_len: int = accepts(0, ge=0, integer=True)  # k, draft tokens proposed per target step (0 with method=draft = off)
    acceptance: float = accepts(0.7, **SHARE)  # method=draft: a, iid per-token acceptance probability
    draft_cost_ratio: float = accepts(0.05, **NON_NEGATIVE)  # method=draft: a draft step's body as a fraction of a target step's body


@dataclass
class CostConfig:
    """How a GPU-hour is priced: "rental" (hardware price) or "tco"."""

    mode: str = accepts("rental", choices=("rental", "tco"))  # rental | tco
    price_usd_per_gpu_hour: Optional[float] = accepts(None, **NON_NEGATIVE)  # override the catalog's rental price (0 = free)
    depreciation_years: float = accepts(4.0, **POSITIVE)  # ASSUMPTION: straight-line over 4 years
    power_usd_per_kwh: float = accepts(0.08, **NON_NEGATIVE)  # ASSUMPTION
    pue: float = accepts(1.3, ge=1.0)  # ASSUMPTION: data-centre power usage effectiveness
    capex_usd_per_gpu: Optional[float] = accepts(None, **NON_NEGATIVE)  # override the catalog capex (tco mode)


@dataclass
class TargetConfig:
    """Latency targets for the SLO-bounded operating point (None = unconstrained)."""

    tpot_ms: Optional[float] = accepts(None, **POSITIVE)  # time per output token, ms
    ttft_ms: Optional[float] = accepts(None, **POSITIVE)  # time to first token, ms
    concurrency: Optional[float] = accepts(None, ge=1.0)  # fixed concurrent sequences per replica


@dataclass
class EstimateConfig:
    """`tokenmargin-estimate` app config."""

    hardware: HardwareConfig = MISSING
    model: ModelConfig = MISSING
    precision: PrecisionConfig = MISSING
    efficiency: EfficiencyConfig = MISSING
    gpus: Optional[int] = accepts(None, **COUNT)  # GPUs per replica (null = best; `nodes` x gpus_per_node when nodes is set)
    nodes: Optional[int] = accepts(None, **COUNT)  # servers per replica (null = best)
    tp: Optional[int] = accepts(None, **COUNT)  # attention / dense tensor-parallel degree (null = best)
    ep: Optional[int] = accepts(None, **COUNT)  # expert-parallel degree (null = best; 1 for dense models)
    disaggregated: Optional[bool] = None  # prefill/decode disaggregated (null = best)
    isl: float = accepts(1000.0, **POSITIVE)
    osl: float = accepts(1000.0, **POSITIVE)
    cached_share: float = accepts(0.0, ge=0.0, lt=1.0)
    speculative: SpeculativeConfig = field(default_factory=SpeculativeConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    cases: Optional[str] = None  # CSV of measured cases to predict instead of one deployment
    output_name: str = "estimate.csv"


@dataclass
class CalibrateConfig:
    """`tokenmargin-calibrate` app config."""

    efficiency: EfficiencyConfig = MISSING
    cases: Optional[str] = None  # CSV in the measured_throughput.csv format (None = bundled copy)
    slo_cases: Optional[str] = None  # CSV in the measured_slo_throughput.csv format (None = bundled copy)
    use_slo: bool = True  # also fit the latency-bound regime
    per_family: bool = True  # fit bandwidth / compute efficiency per GPU family
    fit_mem_util: bool = True  # also fit the usable HBM share
    use_latency: bool = True  # add online-serving inter-token latencies to the loss
    latency_cases: Optional[str] = None  # CSV like benchmarks/data/measured_online_latency.csv (None = bundled)
    steps: int = accepts(600, **COUNT)
    learning_rate: float = accepts(0.05, **POSITIVE)
    seed: int = 0


@dataclass
class OfferConfig:
    """One model offered to a segment, with its reference (observed) list prices."""

    input_usd_per_mtok: float = accepts(**POSITIVE)  # reference input price, USD per million tokens
    output_usd_per_mtok: float = accepts(**POSITIVE)  # reference output price, USD per million tokens
    volume_share: float = accepts(1.0, **POSITIVE)  # share of the segment's reference volume on this model (normalised)
    price_source: str = MISSING  # where the reference prices come from, with date


@dataclass
class TierConfig:
    """Service terms of a tier (priority, standard, flex, batch): they set the SLO its products are
    served at, and so their serving cost through the cost model."""

    tpot_ms: Optional[float] = accepts(None, **POSITIVE)  # guaranteed mean TPOT (None = each segment's own SLO)
    ttft_ms: Optional[float] = accepts(None, **POSITIVE)  # guaranteed mean TTFT (None = each segment's own SLO)
    deferrable: bool = False  # served in spare (off-peak) capacity, without a latency SLO
    source: str = ""  # where the terms come from


def default_tiers() -> dict:
    """The four tiers providers publish (ECONOMICS.md §5; shared/data/api_prices.csv)."""
    return {
        "priority": TierConfig(tpot_ms=20.0, source="OpenAI priority processing: latency SLA '99% > 50 tokens per "
                                                    "second' -> TPOT <= 20 ms (ECONOMICS.md §5)"),
        "standard": TierConfig(source="each segment's own SLO"),
        "flex": TierConfig(deferrable=True, source="OpenAI/Google/Azure flex: sheddable, no latency SLA, 50 % off "
                                                   "(ECONOMICS.md §5)"),
        "batch": TierConfig(deferrable=True, source="OpenAI/Anthropic/Google batch APIs: within 24 h, 50 % off "
                                                    "(ECONOMICS.md §5)"),
    }


@dataclass
class ProductConfig:
    """A product of ours: one model in one tier with one published price sheet, which every segment
    that buys it pays (a product bought by one segment only is a contract)."""

    model: str = MISSING  # catalog model key
    tier: str = "standard"  # a key of demand.tiers
    input_usd_per_mtok: float = accepts(**POSITIVE)  # reference (list) input price, USD per million tokens
    cached_input_usd_per_mtok: Optional[float] = accepts(None, **NON_NEGATIVE)  # reference cache-hit price (None = 0.1 x input)
    output_usd_per_mtok: float = accepts(**POSITIVE)  # reference output price
    price_floor_ratio: Optional[float] = accepts(None, **POSITIVE)  # lowest price of each token kind / reference
    price_ceiling_ratio: Optional[float] = accepts(None, **POSITIVE)  # highest price of each token kind / reference
    # the cached-input and output prices move within this factor of the input price's move, so a
    # sheet keeps its shape (1 = fixed ratios). ASSUMPTION: 2x; market output/input ratios span 1x
    # (Together Llama 3.3 70B) to 8x (OpenAI gpt-5) in api_prices.csv
    price_ratio_band: float = accepts(2.0, ge=1.0)
    price_source: str = MISSING  # where the reference prices come from, with date
    # an off-peak (time-of-day) product: the all-day product it replaces in its hours. Every segment
    # buying that product pays this one's sheet for the load it sends in these hours (same model and
    # tier); its hours' demand responds to this sheet, the rest of the day's to the all-day one
    off_peak_of: Optional[str] = None
    # hours of the day this sheet is valid, "HH:MM-HH:MM" windows on the clock of the load profiles
    # (an end at or before the start wraps past midnight, e.g. "16:30-00:30"); repeats every day
    hours: list[str] = field(default_factory=list)


@dataclass
class CompetitorConfig:
    """A competitor's product: its dated list price sheet (the one at which segments' reference
    shares were observed) and the what-if change of each price."""

    provider: str = MISSING
    model: str = MISSING  # the model sold (a catalog key where it is one of ours, else free text)
    tier: str = "standard"  # a key of demand.tiers (for the report)
    input_usd_per_mtok: float = accepts(**POSITIVE)
    cached_input_usd_per_mtok: Optional[float] = accepts(None, **NON_NEGATIVE)  # None = same as input (no cache discount)
    output_usd_per_mtok: float = accepts(**POSITIVE)
    input_price_ratio: float = accepts(1.0, **POSITIVE)  # what-if: scenario input price / list price
    cached_input_price_ratio: float = accepts(1.0, **POSITIVE)  # what-if: scenario cache-hit price / list price
    output_price_ratio: float = accepts(1.0, **POSITIVE)  # what-if: scenario output price / list price
    date: str = MISSING  # date (or snapshot) of the price sheet
    price_source: str = MISSING  # api_prices.csv row


@dataclass
class SegmentConfig:
    """A customer segment: its traffic, the models it can be served, its demand and its SLO."""

    tier: str = accepts("interactive", choices=("interactive", "batch"))  # of its offers (contracts): interactive (the standard tier) | batch; products carry their own tier
    offers: dict[str, OfferConfig] = field(default_factory=dict)  # model key -> offer (a contract: this segment's own prices)
    products: dict[str, float] = accepts(default_factory=dict, **POSITIVE)  # product key -> share of the reference volume
    competitors: dict[str, float] = accepts(default_factory=dict, gt=0.0, lt=1.0)  # competitor key -> its share of the segment's market at reference (logit)
    nest_parameter: float = accepts(1.0, **FRACTION)  # logit: nest parameter of ours vs competitors' products (1 = plain MNL)
    input_tokens_per_day: float = accepts(**POSITIVE)  # reference volume (at reference prices and quality)
    isl: float = accepts(**POSITIVE)  # mean input tokens per request
    osl: float = accepts(**POSITIVE)  # mean output tokens per request
    cached_share: float = accepts(0.0, ge=0.0, lt=1.0)  # share of input tokens hitting the prefix cache
    cached_price_ratio: float = accepts(0.1, **SHARE)  # cached-input price / input price (market convention 0.1x)
    demand: str = accepts("logit", choices=("logit", "constant_elasticity"))
    elasticity: float = accepts(**POSITIVE)  # own-price elasticity at the reference point (> 1 for constant_elasticity)
    ref_market_share: float = accepts(0.3, gt=0.0, lt=1.0)  # logit only: provider's share of the segment's market at reference
    quality_sensitivity: float = accepts(0.0, **NON_NEGATIVE)  # utility (logit) or log-demand (CE) per percentage point of quality
    latency_sensitivity: float = accepts(0.0, **NON_NEGATIVE)  # utility / log-demand per ms of TPOT above ref_tpot_ms
    ref_tpot_ms: Optional[float] = accepts(None, **POSITIVE)  # TPOT at which the reference volume was observed (None = tpot_ms)
    tpot_ms: Optional[float] = accepts(None, **POSITIVE)  # SLO: mean time per output token (None = no SLO)
    ttft_ms: Optional[float] = accepts(None, **POSITIVE)  # SLO: mean time to first token (None = no SLO)
    peak_to_mean: float = accepts(1.0, ge=1.0)  # peak / mean request rate of this segment's traffic
    # shape of its load over the period grid (mean 1): "flat", a workload of load_profiles.csv
    # (benchmarks/data copy of shared/data), or a CSV path with columns hour, load_vs_mean
    profile: str = "flat"
    min_quality: Optional[float] = accepts(None, **FRACTION)  # floor on served quality retention (fraction of BF16)
    price_floor_ratio: Optional[float] = accepts(None, **POSITIVE)  # lowest price as a multiple of the reference price
    price_ceiling_ratio: Optional[float] = accepts(None, **POSITIVE)  # highest price as a multiple of the reference price
    source: str = ""  # sources / assumptions of this segment's numbers


@dataclass
class DemandConfig:
    """A demand scenario: the customer segments of one market."""

    name: str = MISSING
    description: str = ""
    segments: dict[str, SegmentConfig] = field(default_factory=dict)
    products: dict[str, ProductConfig] = field(default_factory=dict)  # our published price sheets
    competitors: dict[str, CompetitorConfig] = field(default_factory=dict)  # their dated price sheets
    tiers: dict[str, TierConfig] = field(default_factory=default_tiers)  # service terms per tier


@dataclass
class FleetConfig:
    """Which GPUs and precisions may be used, at what cost, under which caps."""

    gpus: list[str] = field(default_factory=lambda: ["h100-sxm", "h200-sxm", "b200"])
    precisions: list[str] = field(default_factory=lambda: ["bf16", "fp8", "int4", "fp4"])
    # every catalog GPU is a key (null = no cap / the catalog price), so an override needs no `+`
    gpu_caps: dict[str, Optional[float]] = accepts(default_factory=lambda: dict.fromkeys(catalog_keys("hardware")),
                                                   **NON_NEGATIVE)  # max GPUs per type (null = no cap)
    price_usd_per_gpu_hour: dict[str, Optional[float]] = accepts(
        default_factory=lambda: dict.fromkeys(catalog_keys("hardware")), **NON_NEGATIVE)  # USD/GPU-hour (0 = free; null = catalog)
    cost: CostConfig = field(default_factory=CostConfig)
    budget_usd_per_day: Optional[float] = accepts(None, **POSITIVE)  # cap on GPU spend per day
    capex_budget_usd: Optional[float] = accepts(None, **POSITIVE)  # cap on fleet purchase value
    max_replica_gpus: int = accepts(64, **COUNT)  # largest deployment (GPUs per replica) the optimizer may choose
    disaggregation: bool = True  # consider prefill/decode disaggregated deployments
    speculation: bool = True  # consider MTP speculative decoding where the model has sourced acceptance
    peak_utilization: float = accepts(0.8, **FRACTION)  # utilisation cap at peak for interactive traffic
    daily_utilization: float = accepts(0.9, **FRACTION)  # cap on average daily utilisation incl. batch
    # on-demand GPUs, paid per hour used, on top of the reserved ones (paid in every period)
    on_demand: bool = True  # use the catalog's on-demand rents (where a GPU has one)
    on_demand_usd_per_gpu_hour: dict[str, Optional[float]] = accepts(
        default_factory=lambda: dict.fromkeys(catalog_keys("hardware")), **NON_NEGATIVE)  # USD/GPU-hour (null = catalog)
    idle_value_usd_per_gpu_hour: float = accepts(0.0, **NON_NEGATIVE)  # value of an idle reserved GPU-hour put to other use (research, training)
    # GPUs of each type a cloud can lend on demand in any one period (null = as many as asked for): a
    # provider's account limit or a market's scarcity. Reserves rise where the cap binds.
    on_demand_cap: dict[str, Optional[float]] = accepts(
        default_factory=lambda: dict.fromkeys(catalog_keys("hardware")), **NON_NEGATIVE)
    # share of each type's on-demand cap available in each period (length time.periods; null = all of it
    # in every period), e.g. less at the market's own busy hours
    on_demand_cap_profile: Optional[list[float]] = None


@dataclass
class TimeConfig:
    """The period grid of one load cycle (a day by default): loads, fleets and costs per period."""

    periods: int = accepts(24, **COUNT)  # periods per cycle
    hours_per_period: float = accepts(1.0, **POSITIVE)  # length of one period, hours (cycle = periods x hours)


@dataclass
class SolverConfig:
    """Solver settings: which solver (``method``), the augmented Lagrangian's and the dual's."""

    starts: int = accepts(8, **COUNT)  # multistart rows solved at once (also the batch width of the integer repair)
    outer_steps: int = accepts(30, **COUNT)  # augmented-Lagrangian multiplier updates (max)
    inner_steps: int = accepts(150, **COUNT)  # Adam steps per outer step
    learning_rate: float = accepts(0.1, **POSITIVE)  # initial Adam learning rate
    final_learning_rate: float = accepts(0.001, **POSITIVE)  # exponentially decayed to this by the last step
    penalty: float = accepts(100.0, **POSITIVE)  # PHR penalty rho on normalised constraints (at 20 the default
    # scenario with quality floors, consumer_chat 0.99 and agentic_coding 0.995, ended at the step limit after
    # 30 and 60 outer steps; at 100 it converges)
    tol_feasibility: float = accepts(1e-4, **POSITIVE)  # max normalised constraint violation for "converged"
    tol_objective: float = accepts(1e-6, **POSITIVE)  # relative objective change between outer steps for "converged"
    integer_fleet: bool = True  # round and repair the fleet to whole replicas
    repair_rounds: int = accepts(3, ge=0, integer=True)  # greedy remove-one-replica rounds after rounding
    seed: int = accepts(0, ge=0, integer=True)
    # auto: the structured dual solver (optimizer/solve/dual.py; GPU caps and budgets priced) unless a
    # quality floor is active, then the augmented Lagrangian (optimizer/solve/auglag.py); or force either.
    # Single runs and sweeps use the same rule (optimizer/solve/choose.py).
    method: str = accepts("auto", choices=("auto", "dual", "auglag"))
    dual_steps: int = accepts(1000, **COUNT)  # dual: Rprop steps of a solve from scratch (single runs, a sweep's base)
    dual_tol_gap: float = accepts(5e-3, **POSITIVE)  # dual: certified relative optimality gap to count as converged
    dual_temperature: float = accepts(3e-3, **POSITIVE)  # dual: final softmax temperature of the option choice
    # in single runs (sweeps: sweep.dual_temperature); lower is closer to the exact argmax but needs more steps


@dataclass
class AxisConfig:
    """One sweep axis: a numeric scenario leaf and the values it takes (give exactly one source)."""

    path: str = MISSING  # dotted config path, e.g. fleet.price_usd_per_gpu_hour.h200-sxm
    values: Optional[list[float]] = None  # explicit values
    linspace: Optional[list[float]] = None  # [start, stop, num]
    logspace: Optional[list[float]] = None  # [start, stop, num], geometric (values, not exponents)
    uniform: Optional[list[float]] = None  # [low, high]: sampled (Latin hypercube) in mode=sample
    loguniform: Optional[list[float]] = None  # [low, high]: sampled log-uniformly
    relative: bool = False  # values multiply the scenario's base value instead of replacing it


@dataclass
class SweepConfig:
    """Vectorised what-if sweep (`tokenmargin sweep=<name>`); off when ``axes`` is empty."""

    name: str = "none"
    # name -> AxisConfig fields; untyped here so that a whole axis can be added from the command line
    # (+sweep.axes.rent={path: ..., uniform: [0.8, 1.3]}); validated against AxisConfig when the sweep starts
    axes: dict[str, Any] = field(default_factory=dict)
    mode: str = accepts("grid", choices=("grid", "sample"))  # grid (cartesian product) | sample (Latin hypercube, N samples)
    samples: int = accepts(1000, **COUNT)  # mode=sample: number of scenarios
    seed: int = 0
    chunk_size: int = accepts(1024, **COUNT)  # scenarios per compiled call (bounded memory; the unit of resume)
    starts: int = accepts(1, **COUNT)  # starts per scenario of the augmented Lagrangian (solver.method)
    dual_steps: int = accepts(80, **COUNT)  # dual: Rprop steps per scenario, warm-started from the base scenario's
    # split (80 chosen with deployments as choices, where 60 left what-if scenarios outside the certified gap)
    dual_steps_periods: int = accepts(160, **COUNT)  # dual: steps per scenario when the day has several periods
    # (Frank–Wolfe steps on the period charges: 80 left 19 % of the `risk` sweep at 24 periods unconverged, 160 0.4 %)
    dual_temperature: float = accepts(1e-2, **POSITIVE)  # dual: final option-choice temperature of the base and every scenario
    repair_rounds: int = accepts(5, ge=0, integer=True)  # dual: re-solves of a row left without a plan (step limit, infeasible,
    # or no whole fleet within a binding cap or budget), each from its own state, within limits lowered by the
    # rounding (optimizer/sweep/repair.py); 0: off
    repair_steps: Optional[int] = accepts(None, ge=1, integer=True)  # dual steps of each re-solve (None: twice the first pass's)
    heatmap: Optional[list[str]] = None  # two axis names for the margin heatmap (default: first two)
    resume: bool = True  # reuse finished chunks of an identical sweep
    directory: Optional[str] = None  # chunk store (default outputs/sweeps/<name>; one <hash>-c<chunk>/ folder per sweep)


@dataclass
class OutputConfig:
    plots: bool = True
    progress: bool = True  # progress bar on solves (off when not a TTY or in multirun)


@dataclass
class RunConfig:
    """`tokenmargin` app config."""

    demand: DemandConfig = MISSING
    fleet: FleetConfig = field(default_factory=FleetConfig)
    time: TimeConfig = field(default_factory=TimeConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    efficiency: EfficiencyConfig = MISSING
    output: OutputConfig = field(default_factory=OutputConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)


def register_configs() -> None:
    """Store the schemas in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(group="hardware", name="base_hardware", node=HardwareConfig)
    cs.store(group="model", name="base_model", node=ModelConfig)
    cs.store(group="precision", name="base_precision", node=PrecisionConfig)
    cs.store(group="efficiency", name="base_efficiency", node=EfficiencyConfig)
    cs.store(name="base_estimate", node=EstimateConfig)
    cs.store(name="base_calibrate", node=CalibrateConfig)
    cs.store(group="demand", name="base_demand", node=DemandConfig)
    cs.store(group="fleet", name="base_fleet", node=FleetConfig)
    cs.store(group="solver", name="base_solver", node=SolverConfig)
    cs.store(group="sweep", name="base_sweep", node=SweepConfig)
    cs.store(group="time", name="base_time", node=TimeConfig)
    cs.store(name="base_run", node=RunConfig)


__all__: list[Any] = [
    "PRECISION_KEYS", "GPU_FAMILIES", "DenseTflops", "HardwareConfig", "QualityRetention", "ModelConfig",
    "PrecisionConfig", "EfficiencyConfig", "WorkloadConfig", "SpeculativeConfig", "CostConfig",
    "TargetConfig", "EstimateConfig", "CalibrateConfig", "register_configs",
]
