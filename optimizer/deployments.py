"""Candidate deployments of a (GPU, model, precision): the layouts the optimizer and the estimator choose from.

For every GPU type the candidates are the layouts serving engines use (TensorRT-LLM, SGLang,
vLLM, DeepSeek's own system):

* dense models: tensor parallelism over 1, 2, 4 or 8 GPUs of one scale-up domain (NVLink, xGMI, or
  the PCIe node of GPUs without NVLink);
* MoE models: "TEP" (attention TP, experts EP over the same GPUs; the min-latency layout) inside
  one domain, and "DEP" (attention data parallel, experts EP over every GPU) over 2 ... 64 GPUs,
  spanning nodes over the scale-out NICs when larger than the domain;
* each aggregated (prefill interleaved with decode) or prefill/decode disaggregated (when the GPU
  has scale-out NICs to move the KV cache);
* MTP speculation off, or with 1 or 3 drafts for models with an MTP head and sourced acceptance.

Layouts that cannot hold the weights plus one sequence of KV are dropped here (host-side, from the
catalog's numbers and the usable HBM share), so the kernels only see plausible candidates.
"""

from __future__ import annotations

import math

from optimizer.errors import ConfigError
from optimizer.params import Layout, expert_slots, scaleup, validate_layout
from optimizer.schema import HardwareConfig, ModelConfig, PrecisionConfig

MAX_REPLICA_GPUS = 64
"""Largest replica considered (DeepSeek's decode instances span 18 nodes = 144 H800s; 64 keeps the
candidate set small and covers the EP 32/64 deployments TensorRT-LLM documents on NVL72)."""

MTP_DRAFTS = (1, 3)
"""MTP draft lengths tried when the model has sourced acceptance for them."""


def _powers_of_two(limit: int) -> list[int]:
    return [2**i for i in range(int(math.log2(max(limit, 1))) + 1)]


def fits_one_sequence(hw: HardwareConfig, model: ModelConfig, prec: PrecisionConfig, layout: Layout,
                      mem_util: float, context: float) -> bool:
    """Host-side check that a layout holds its per-GPU weights plus one ``context``-token sequence of KV."""
    routed = model.routed_expert_params_b * 1e9 * prec.bytes_per_weight
    dense = model.total_params_b * 1e9 * prec.bytes_per_weight - routed
    per_gpu = dense / layout.tp + routed * expert_slots(model.num_experts, layout.ep) / layout.gpus
    kv_tok = (model.kv_bytes_per_token_bf16 + model.window_kv_bytes_per_token_bf16) * prec.bytes_per_kv / 2.0
    shards = 1 if model.attention == "mla" else max(1, min(layout.tp, model.num_kv_heads))
    return hw.memory_gb * 1e9 * mem_util - per_gpu >= kv_tok * context / shards


def with_draft_lengths(layouts: list[Layout], model: ModelConfig, drafts) -> list[Layout]:
    """``layouts`` plus every shape of them with each MTP draft length in ``drafts`` that ``model`` has
    sourced acceptance for (e.g. a measured MTP-2 or MTP-5 row, or ``speculative.draft_len=5``)."""
    shapes = dict.fromkeys((x.gpus, x.tp, x.ep, x.disaggregated) for x in layouts)
    return layouts + [Layout(g, t, e, d, k) for (g, t, e, d) in shapes for k in drafts
                      if 0 < k <= len(model.mtp_accepted_tokens)]


def candidate_layouts(hw: HardwareConfig, model: ModelConfig, prec: PrecisionConfig, mem_util: float,
                      context: float, *, gpus: int | None = None, disaggregation: bool = True,
                      speculation: bool = True) -> list[Layout]:
    """The layouts to consider for ``model`` at ``prec`` on ``hw`` (those that fit one ``context`` sequence).

    Args:
      gpus: only replicas of exactly this many GPUs (e.g. a measured deployment's ``num_gpus``).
      disaggregation / speculation: include disaggregated / MTP variants.
    """
    _, domain = scaleup(hw)
    multi_node = hw.scaleout_bw_gb_s > 0
    moe = model.num_experts > 0
    limit = MAX_REPLICA_GPUS if (moe and multi_node) else domain
    sizes = [g for g in _powers_of_two(max(limit, gpus or 1)) if g <= max(limit, gpus or 0)]
    if gpus is not None:
        sizes = [gpus]
    shapes: list[tuple[int, int, int]] = []
    for g in sizes:
        if not moe:
            if g <= domain or gpus is not None:
                shapes.append((g, g, 1))
            continue
        ep = g if model.num_experts % g == 0 else math.gcd(g, model.num_experts)
        if g <= domain:
            shapes.append((g, g, ep))  # TEP: attention TP, experts EP
        if g > 1:
            shapes.append((g, 1, ep))  # DEP: attention DP, experts EP
    has_mtp = speculation and model.mtp_layers > 0 and bool(model.mtp_accepted_tokens)
    spec = [0] + ([k for k in MTP_DRAFTS if k <= len(model.mtp_accepted_tokens)] if has_mtp else [])
    out = []
    for g, tp, ep in shapes:
        for dis in ([False, True] if (disaggregation and multi_node) else [False]):
            for k in spec:
                lay = Layout(gpus=g, tp=tp, ep=ep, disaggregated=dis, spec_k=k)
                try:
                    validate_layout(hw, model, lay)
                except ConfigError:
                    continue
                if fits_one_sequence(hw, model, prec, lay, mem_util, context):
                    out.append(lay)
    return out
