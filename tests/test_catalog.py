"""Every catalog entry composes through Hydra and validates; bad names give clear errors."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from optimizer import catalog
from optimizer.errors import UnknownCatalogEntry, UnsupportedPrecision
from optimizer.params import build_deployment
from optimizer.schema import GPU_FAMILIES, PRECISION_KEYS, EstimateConfig, register_configs

CONF = str(Path(__file__).resolve().parent.parent / "conf")
GPUS = ["a100-sxm", "l40s", "h100-sxm", "h100-nvl", "h800", "h200-sxm", "gh200", "b200", "b300", "gb200",
        "gb300", "rtx-pro-6000", "mi300x", "mi325x", "mi350x", "mi355x"]
MODELS = ["llama-3p1-8b", "llama-3p1-70b", "llama-3p3-70b", "llama-3p1-405b", "llama-4-scout",
          "llama-4-maverick", "mistral-7b", "mixtral-8x7b", "mixtral-8x22b", "qwen2p5-7b", "qwen2p5-72b",
          "qwen3-8b", "qwen3-30b-a3b", "qwen3-235b-a22b", "gpt-oss-20b", "gpt-oss-120b", "deepseek-v3",
          "deepseek-v3p2", "kimi-k2", "llama-2-70b"]

register_configs()


def _compose(overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="estimate", overrides=overrides)


def test_catalog_is_complete():
    assert catalog.available("hardware") == sorted(GPUS)
    assert catalog.available("model") == sorted(MODELS)
    assert catalog.available("precision") == sorted(PRECISION_KEYS)


@pytest.mark.parametrize("key", GPUS)
def test_hardware_entries(key):
    hw = catalog.load_hardware(key)
    assert hw.key == key and hw.family in GPU_FAMILIES
    assert hw.memory_gb > 0 and hw.mem_bw_tb_s > 0 and hw.power_w > 0 and hw.price_usd_per_gpu_hour > 0
    assert hw.dense_tflops.bf16 and hw.dense_tflops.bf16 > 0
    assert hw.spec_source and hw.price_source and hw.price_date
    fp4 = hw.dense_tflops.fp4 is not None
    assert fp4 == (hw.family in ("blackwell", "cdna4")), "native FP4 only on Blackwell and MI355X"
    cfg = _compose([f"hardware={key}"])
    assert cfg.hardware.key == key


@pytest.mark.parametrize("key", MODELS)
def test_model_entries(key):
    m = catalog.load_model(key)
    assert m.key == key
    assert 0 < m.active_params_b <= m.total_params_b
    assert 0 <= m.routed_expert_params_b < m.total_params_b
    assert (m.num_experts > 0) == (m.routed_expert_params_b > 0)
    q = m.quality
    assert q.bf16 == 1.0 and all(0.5 < getattr(q, p) <= 1.0 for p in PRECISION_KEYS)
    assert m.quality_source and m.source
    assert m.full_attention_layers + m.window_layers == m.layers
    cfg = _compose([f"model={key}"])
    assert cfg.model.key == key


def test_published_shapes_spot_checks():
    # models.csv: Llama-3.1-70B has 80 layers, 8 KV heads -> 327680 B/token at BF16
    m = catalog.load_model("llama-3p1-70b")
    assert (m.layers, m.num_kv_heads, m.kv_bytes_per_token_bf16) == (80, 8, 327680)
    ds = catalog.load_model("deepseek-v3")
    assert ds.attention == "mla" and ds.kv_bytes_per_token_bf16 == 61 * (512 + 64) * 2
    h200 = catalog.load_hardware("h200-sxm")
    assert (h200.memory_gb, h200.mem_bw_tb_s, h200.dense_tflops.fp8) == (141.0, 4.8, 1979.0)
    b200 = catalog.load_hardware("b200")
    assert b200.dense_tflops.fp4 == 9000.0


def test_structured_config_rejects_typos_and_bad_types():
    with pytest.raises(ConfigCompositionException):
        _compose(["tpp=2"])
    with pytest.raises(ConfigCompositionException):
        _compose(["tp=two"])
    with pytest.raises(ConfigCompositionException, match="h300"):
        _compose(["hardware=h300"])
    cfg = _compose(["model=llama-3p1-8b", "tp=2"])
    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, EstimateConfig) and obj.tp == 2


def test_unknown_names_list_the_available_ones():
    with pytest.raises(UnknownCatalogEntry) as e:
        catalog.load_model("llama-9")
    assert "llama-3p1-8b" in str(e.value) and "deepseek-v3" in str(e.value)
    with pytest.raises(UnknownCatalogEntry) as e:
        catalog.load_hardware("h300")
    assert "h200-sxm" in str(e.value)


def test_fp4_on_a_gpu_without_fp4_names_who_supports_it():
    with pytest.raises(UnsupportedPrecision) as e:
        build_deployment(catalog.load_hardware("h200-sxm"), catalog.load_model("llama-3p1-8b"),
                         catalog.load_precision("fp4"), 1)
    msg = str(e.value)
    assert "fp4" in msg and "h200-sxm" in msg
    for gpu in ("b200", "b300", "gb200", "gb300", "mi355x", "rtx-pro-6000"):
        assert gpu in msg
    assert "h100-sxm" not in msg.split("support fp4:")[-1]
