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

from omegaconf import MISSING

PRECISION_KEYS: tuple[str, ...] = ("bf16", "fp8", "int8", "int4", "fp4")
"""Canonical precision keys, in the order used for every array axis over precisions."""

GPU_FAMILIES: tuple[str, ...] = ("ampere", "ada", "hopper", "blackwell", "cdna3", "cdna4")
"""GPU architecture families; calibration may fit one efficiency factor per family."""


@dataclass
class DenseTflops:
    """Dense (no sparsity) tensor-core peak per math precision, TFLOPS (TOPS for int8).

    ``None`` means the GPU has no tensor-core support for that precision.
    """

    bf16: Optional[float] = None
    fp8: Optional[float] = None
    int8: Optional[float] = None
    fp4: Optional[float] = None


@dataclass
class HardwareConfig:
    """One GPU type. Every number is sourced in the YAML file that fills it."""

    key: str = MISSING  # canonical key, e.g. "h200-sxm"
    name: str = MISSING  # full product name
    family: str = MISSING  # one of GPU_FAMILIES
    memory_gb: float = MISSING  # HBM / GDDR capacity per GPU, GB (1e9 bytes)
    mem_bw_tb_s: float = MISSING  # memory bandwidth per GPU, TB/s (1e12 bytes/s)
    dense_tflops: DenseTflops = field(default_factory=DenseTflops)
    power_w: float = MISSING  # board power (TDP/TGP), W
    scaleup_bw_gb_s: float = 0.0  # scale-up link bandwidth per GPU per direction, GB/s (0 = PCIe only)
    scaleup_domain_gpus: int = 1  # GPUs in one scale-up (NVLink / xGMI) domain
    gpus_per_node: int = 8  # GPUs per server (the PCIe node for GPUs without a scale-up link)
    pcie_bw_gb_s: float = 0.0  # host PCIe bandwidth per GPU per direction, GB/s (TP over PCIe when no scale-up link)
    scaleout_bw_gb_s: float = 0.0  # scale-out (InfiniBand / RoCE NIC) bandwidth per GPU per direction, GB/s
    interconnect_source: str = ""  # where the PCIe / scale-out figures come from
    price_usd_per_gpu_hour: float = MISSING  # default rental price, USD per GPU-hour
    price_date: str = MISSING  # date of that price
    price_source: str = MISSING  # where that price comes from
    capex_usd_per_gpu: Optional[float] = None  # purchase price per GPU incl. server share, USD (None = unknown)
    capex_source: str = ""
    spec_source: str = MISSING  # where the specs come from
    notes: str = ""


@dataclass
class QualityRetention:
    """Quality retained relative to BF16 (fraction, BF16 = 1.0) per precision."""

    bf16: float = 1.0
    fp8: float = MISSING
    int8: float = MISSING
    int4: float = MISSING
    fp4: float = MISSING


@dataclass
class ModelConfig:
    """One LLM architecture. Every number is sourced in the YAML file that fills it."""

    key: str = MISSING  # canonical key, e.g. "llama-3.3-70b"
    name: str = MISSING
    total_params_b: float = MISSING  # all weights incl. every MoE expert, billions
    active_params_b: float = MISSING  # weights used per token (FLOPs), billions
    routed_expert_params_b: float = 0.0  # weights in routed experts (all layers), billions; 0 for dense
    num_experts: int = 0  # routed experts per MoE layer (0 = dense)
    experts_per_token: int = 0  # routed experts chosen per token (top-k)
    shared_experts: int = 0  # always-active shared experts per MoE layer
    layers: int = MISSING
    hidden_size: int = MISSING
    num_attention_heads: int = MISSING
    num_kv_heads: int = MISSING  # 0 for MLA (latent shared by all heads)
    head_dim: int = MISSING  # q/k head dim (for MLA: the nope+rope qk dim)
    attention: str = "gqa"  # "gqa" or "mla"
    mla_kv_lora_rank: int = 0  # MLA only: cached latent size
    mla_rope_dim: int = 0  # MLA only: cached decoupled RoPE key size
    mla_v_head_dim: int = 0  # MLA only: value head dim (prefill runs un-absorbed attention)
    full_attention_layers: int = MISSING  # layers attending to the whole context
    window_layers: int = 0  # sliding-window / chunked-attention layers
    window_tokens: int = 0  # their window (or chunk) length, tokens
    kv_bytes_per_token_bf16: float = MISSING  # KV bytes per context token over the full-attention layers at 2 B/element
    window_kv_bytes_per_token_bf16: float = 0.0  # KV bytes per token over window layers at 2 B/element (capped at window_tokens)
    max_context: int = MISSING  # tokens
    moe_layers: int = 0  # layers with routed experts (0 = every layer of an MoE model)
    mtp_layers: int = 0  # native multi-token-prediction modules (DeepSeek-V3: 1), drafted autoregressively
    mtp_accepted_tokens: list[float] = field(default_factory=list)  # E[tokens per verify round] for k = 1, 2, ... drafts
    mtp_source: str = ""  # where the MTP acceptance figures come from
    quality: QualityRetention = field(default_factory=QualityRetention)
    quality_source: str = MISSING  # which quant_quality.csv rows / evidence were used
    source: str = MISSING
    notes: str = ""


@dataclass
class PrecisionConfig:
    """A serving precision (weights / activations / KV cache)."""

    key: str = MISSING  # one of PRECISION_KEYS
    bytes_per_weight: float = MISSING  # incl. quantisation scales
    bytes_per_kv: float = MISSING  # bytes per KV-cache element
    compute: str = MISSING  # which DenseTflops field is the math roof: bf16 | fp8 | int8 | fp4
    weight_only: bool = False  # True: weights dequantised to 16-bit before the matmul
    source: str = MISSING
    notes: str = ""


@dataclass
class EfficiencyConfig:
    """Calibrated efficiency factors of the roofline model (fitted by tokenmargin-calibrate).

    Per-family factors are keyed by GPU family; ``default_*`` applies to families absent from the fit.
    """

    bw_eff: dict[str, float] = field(default_factory=dict)  # achieved / peak memory bandwidth, per family
    flops_eff: dict[str, float] = field(default_factory=dict)  # achieved / peak tensor FLOPS in decode, per family
    prefill_flops_eff: dict[str, float] = field(default_factory=dict)  # achieved / peak FLOPS in prefill, per family
    default_bw_eff: float = 0.8
    default_flops_eff: float = 0.6
    default_prefill_flops_eff: float = 0.6
    moe_eff: float = 1.0  # efficiency of routed-expert GEMMs relative to dense GEMMs (all families)
    step_overhead_ms: float = 1.0  # fixed per decode step (scheduling, sampling), ms
    mem_util: float = 0.9  # usable share of HBM for weights + KV cache
    layer_overhead_us: float = 0.0  # fixed per layer per decode step (kernel launches, syncs), microseconds
    moe_layer_overhead_us: float = 0.0  # extra per MoE layer per step (router, top-k, permute, grouped GEMM launches), us
    collective_latency_us: float = 0.0  # latency of one collective (all-reduce, EP dispatch or combine), microseconds
    ep_imbalance: float = 1.0  # busiest / mean tokens per expert-parallel rank at large EP (>= 1)
    source: str = ""  # command and data that produced the values


@dataclass
class WorkloadConfig:
    """The traffic a deployment serves."""

    isl: float = 1000.0  # mean input (prompt) tokens per request
    osl: float = 1000.0  # mean output tokens per request
    cached_share: float = 0.0  # share of input tokens served from the prefix cache (skip prefill)


@dataclass
class SpeculativeConfig:
    """Speculative decoding.

    ``method``: null = the best of off and the model's MTP head (where its acceptance is sourced);
    ``none``; ``mtp`` (the model's MTP head, ``draft_len`` drafts or the best of 1 and 3 when 0);
    ``draft`` (a draft model or Eagle-style head with iid ``acceptance`` and ``draft_cost_ratio``).
    """

    method: Optional[str] = None  # null | none | mtp | draft
    draft_len: int = 0  # k, draft tokens proposed per target step (0 with method=draft = off)
    acceptance: float = 0.7  # method=draft: a, iid per-token acceptance probability
    draft_cost_ratio: float = 0.05  # method=draft: a draft step's body as a fraction of a target step's body


@dataclass
class CostConfig:
    """How a GPU-hour is priced: "rental" (hardware price) or "tco"."""

    mode: str = "rental"  # rental | tco
    price_usd_per_gpu_hour: Optional[float] = None  # override the hardware catalog's rental price
    depreciation_years: float = 4.0  # ASSUMPTION: straight-line over 4 years
    power_usd_per_kwh: float = 0.08  # ASSUMPTION
    pue: float = 1.3  # ASSUMPTION: data-centre power usage effectiveness
    capex_usd_per_gpu: Optional[float] = None  # override the catalog capex (tco mode)


@dataclass
class TargetConfig:
    """Latency targets for the SLO-bounded operating point (None = unconstrained)."""

    tpot_ms: Optional[float] = None  # time per output token, ms
    ttft_ms: Optional[float] = None  # time to first token, ms
    concurrency: Optional[float] = None  # fixed concurrent sequences per replica


@dataclass
class EstimateConfig:
    """`tokenmargin-estimate` app config."""

    hardware: HardwareConfig = MISSING
    model: ModelConfig = MISSING
    precision: PrecisionConfig = MISSING
    efficiency: EfficiencyConfig = MISSING
    gpus: Optional[int] = None  # GPUs per replica (null = best; `nodes` x gpus_per_node when nodes is set)
    nodes: Optional[int] = None  # servers per replica (null = best)
    tp: Optional[int] = None  # attention / dense tensor-parallel degree (null = best)
    ep: Optional[int] = None  # expert-parallel degree (null = best; 1 for dense models)
    disaggregated: Optional[bool] = None  # prefill/decode disaggregated (null = best)
    isl: float = 1000.0
    osl: float = 1000.0
    cached_share: float = 0.0
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
    steps: int = 600
    learning_rate: float = 0.05
    seed: int = 0


@dataclass
class OfferConfig:
    """One model offered to a segment, with its reference (observed) list prices."""

    input_usd_per_mtok: float = MISSING  # reference input price, USD per million tokens
    output_usd_per_mtok: float = MISSING  # reference output price, USD per million tokens
    volume_share: float = 1.0  # share of the segment's reference volume on this model (normalised)
    price_source: str = MISSING  # where the reference prices come from, with date


@dataclass
class SegmentConfig:
    """A customer segment: its traffic, the models it can be served, its demand and its SLO."""

    tier: str = "interactive"  # interactive (served at peak within SLO) | batch (off-peak spare capacity)
    offers: dict[str, OfferConfig] = field(default_factory=dict)  # model key -> offer
    input_tokens_per_day: float = MISSING  # reference volume (at reference prices and quality)
    isl: float = MISSING  # mean input tokens per request
    osl: float = MISSING  # mean output tokens per request
    cached_share: float = 0.0  # share of input tokens hitting the prefix cache
    cached_price_ratio: float = 0.1  # cached-input price / input price (market convention 0.1x)
    demand: str = "logit"  # logit | constant_elasticity
    elasticity: float = MISSING  # own-price elasticity at the reference point (positive number)
    ref_market_share: float = 0.3  # logit only: provider's share of the segment's market at reference
    quality_sensitivity: float = 0.0  # utility (logit) or log-demand (CE) per percentage point of quality
    latency_sensitivity: float = 0.0  # utility / log-demand per ms of TPOT above ref_tpot_ms
    ref_tpot_ms: Optional[float] = None  # TPOT at which the reference volume was observed (None = tpot_ms)
    tpot_ms: Optional[float] = None  # SLO: mean time per output token (None = no SLO)
    ttft_ms: Optional[float] = None  # SLO: mean time to first token (None = no SLO)
    peak_to_mean: float = 1.0  # peak / mean request rate of this segment's traffic
    min_quality: Optional[float] = None  # floor on served quality retention (fraction of BF16)
    price_floor_ratio: Optional[float] = None  # lowest price as a multiple of the reference price
    price_ceiling_ratio: Optional[float] = None  # highest price as a multiple of the reference price
    source: str = ""  # sources / assumptions of this segment's numbers


@dataclass
class DemandConfig:
    """A demand scenario: the customer segments of one market."""

    name: str = MISSING
    description: str = ""
    segments: dict[str, SegmentConfig] = field(default_factory=dict)


@dataclass
class FleetConfig:
    """Which GPUs and precisions may be used, at what cost, under which caps."""

    gpus: list[str] = field(default_factory=lambda: ["h100-sxm", "h200-sxm", "b200"])
    precisions: list[str] = field(default_factory=lambda: ["bf16", "fp8", "int4", "fp4"])
    gpu_caps: dict[str, float] = field(default_factory=dict)  # max GPUs per type
    price_usd_per_gpu_hour: dict[str, float] = field(default_factory=dict)  # overrides of catalog prices
    cost: CostConfig = field(default_factory=CostConfig)
    budget_usd_per_day: Optional[float] = None  # cap on GPU spend per day
    capex_budget_usd: Optional[float] = None  # cap on fleet purchase value
    max_replica_gpus: int = 64  # largest deployment (GPUs per replica) the optimizer may choose
    disaggregation: bool = True  # consider prefill/decode disaggregated deployments
    speculation: bool = True  # consider MTP speculative decoding where the model has sourced acceptance
    peak_utilization: float = 0.8  # utilisation cap at peak for interactive traffic
    daily_utilization: float = 0.9  # cap on average daily utilisation incl. batch


@dataclass
class SolverConfig:
    """Augmented-Lagrangian + Adam solver settings."""

    starts: int = 8  # multistart rows solved at once (also the batch width of the integer repair)
    outer_steps: int = 30  # augmented-Lagrangian multiplier updates (max)
    inner_steps: int = 150  # Adam steps per outer step
    learning_rate: float = 0.1  # initial Adam learning rate
    final_learning_rate: float = 0.001  # exponentially decayed to this by the last step
    penalty: float = 20.0  # PHR penalty rho on normalised constraints
    tol_feasibility: float = 1e-4  # max normalised constraint violation for "converged"
    tol_objective: float = 1e-6  # relative objective change between outer steps for "converged"
    integer_fleet: bool = True  # round and repair the fleet to whole replicas
    repair_rounds: int = 3  # greedy remove-one-replica rounds after rounding
    seed: int = 0
    dual: bool = True  # also solve with the structured dual solver (no quality floors): it starts one Adam row and
    # is the relaxed plan when Adam ends worse or unconverged (optimizer/dual.py; GPU caps and budgets priced)


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
    mode: str = "grid"  # grid (cartesian product) | sample (Latin hypercube, N samples)
    samples: int = 1000  # mode=sample: number of scenarios
    seed: int = 0
    chunk_size: int = 1024  # scenarios per compiled call (bounded memory; the unit of resume)
    starts: int = 1  # starts per scenario (method=adam)
    # auto: the structured dual solver (optimizer/dual.py) when no cap, budget or quality floor is
    # active, else adam (the augmented-Lagrangian Adam solver of single runs); or force either
    method: str = "auto"
    dual_steps: int = 80  # method=dual: Rprop steps on the peak/daily cost split (with deployments as choices, 60
    # left 1 of 12 what-if scenarios at a 1.1 % certified gap; 80 certifies all within 0.33 %)
    dual_tol_gap: float = 5e-3  # method=dual: certified relative optimality gap to count as converged
    heatmap: Optional[list[str]] = None  # two axis names for the margin heatmap (default: first two)
    resume: bool = True  # reuse finished chunks of an identical sweep
    directory: Optional[str] = None  # chunk store (default outputs/sweeps/<name>-<hash>)


@dataclass
class OutputConfig:
    plots: bool = True
    progress: bool = True  # progress bar on solves (off when not a TTY or in multirun)


@dataclass
class RunConfig:
    """`tokenmargin` app config."""

    demand: DemandConfig = MISSING
    fleet: FleetConfig = field(default_factory=FleetConfig)
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
    cs.store(name="base_run", node=RunConfig)


__all__: list[Any] = [
    "PRECISION_KEYS", "GPU_FAMILIES", "DenseTflops", "HardwareConfig", "QualityRetention", "ModelConfig",
    "PrecisionConfig", "EfficiencyConfig", "WorkloadConfig", "SpeculativeConfig", "CostConfig",
    "TargetConfig", "EstimateConfig", "CalibrateConfig", "register_configs",
]
