"""Dot-free model keys (``llama-3p3-70b``) and the old dotted keys kept as aliases wherever a key is typed."""

import logging
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from optimizer import catalog
from optimizer.cases import (BUNDLED_CASES, BUNDLED_LATENCY, build_latency_cases, predict_frame, read_cases,
                             read_latency_cases)
from optimizer.catalog import MODEL_ALIASES, canonical_model
from optimizer.errors import ConfigError
from optimizer.problem import scenario_inputs
from optimizer.run_estimate import warn_model_alias
from optimizer.schema import register_configs
from optimizer.sweep import resolve_path
from tests.scenarios import run_config, segment

CONF = str((Path(__file__).resolve().parent.parent / "conf"))

register_configs()


def _alias_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "tokenmargin" and r.levelno == logging.WARNING and "is an alias of" in r.getMessage()]


def _compose(config_name: str, overrides: list[str], **kw):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides, **kw)


@pytest.mark.parametrize("old,new", sorted(MODEL_ALIASES.items()))
def test_new_key_loads_and_old_key_is_an_alias(old, new, caplog):
    assert "." not in new
    m = catalog.load_model(new)
    assert m.key == new
    assert not _alias_lines(caplog)
    with caplog.at_level(logging.WARNING, logger="tokenmargin"):
        assert catalog.load_model(old) == m
    assert _alias_lines(caplog) == [f"model key '{old}' is an alias of '{new}' (dotted keys cannot be addressed "
                                    f"in overrides); use '{new}'"]
    assert canonical_model(new) == new and canonical_model(old, warn=False) == new


def test_available_lists_no_alias_and_each_alias_file_pulls_in_its_target():
    models = catalog.available("model")
    assert not set(models) & set(MODEL_ALIASES) and set(MODEL_ALIASES.values()) <= set(models)
    assert all("." not in k for k in models)
    for old, new in MODEL_ALIASES.items():
        raw = OmegaConf.load(Path(CONF) / "model" / f"{old}.yaml")
        assert list(raw.keys()) == ["defaults"] and list(raw.defaults) == [new, "_self_"]


def test_override_on_a_product_and_a_renamed_offer_composes():
    cfg = _compose("config", ["demand.products.llama-70b.input_usd_per_mtok=0.5"])
    assert cfg.demand.products["llama-70b"].input_usd_per_mtok == 0.5
    assert cfg.demand.products["llama-70b"].model == "llama-3p3-70b"
    cfg = _compose("config", ["experiment=deepseek-h800",
                              "demand.segments.deepseek_service.offers.deepseek-v3.input_usd_per_mtok=0.5"])
    assert cfg.demand.segments.deepseek_service.offers["deepseek-v3"].input_usd_per_mtok == 0.5


def test_estimate_model_alias_composes_and_warns(caplog):
    cfg = _compose("estimate", ["model=llama-3.3-70b"], return_hydra_config=True)
    assert cfg.model.key == "llama-3p3-70b" and cfg.model.name == "Llama 3.3 70B"
    assert cfg.model == _compose("estimate", ["model=llama-3p3-70b"]).model
    with caplog.at_level(logging.WARNING, logger="tokenmargin"):
        warn_model_alias(cfg.hydra.runtime.choices)
        warn_model_alias({"model": "llama-3p3-70b"})
    lines = _alias_lines(caplog)
    assert len(lines) == 1 and lines[0].startswith("model=llama-3.3-70b: model key 'llama-3.3-70b'")


def test_demand_offers_keyed_by_old_names_reach_labels_canonical(caplog):
    cfg = run_config({"chat": segment(models=("llama-3.1-8b",))})
    with caplog.at_level(logging.WARNING, logger="tokenmargin"):
        numbers, _, labels = scenario_inputs(cfg)
    assert labels.models == ("llama-3p1-8b",)
    assert _alias_lines(caplog)[0].startswith("demand.segments.chat.offers: model key 'llama-3.1-8b'")
    # sweep axis paths: the old name resolves to the new label, with the same warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tokenmargin"):
        for m in ("llama-3.1-8b", "llama-3p1-8b"):
            assert resolve_path(f"quality.{m}.fp8", labels).index == (0, 0)
            t = resolve_path(f"demand.segments.chat.offers.{m}.input_usd_per_mtok", labels)
            assert (t.field, t.index) == ("product_input", (0,))  # the segment's contract for the model
    assert len(_alias_lines(caplog)) == 2
    with pytest.raises(ConfigError, match="names model 'llama-3p1-8b' twice"):
        scenario_inputs(run_config({"chat": segment(models=("llama-3.1-8b", "llama-3p1-8b"))}))


def test_cases_csv_with_an_old_name_predicts(tmp_path, caplog):
    p = tmp_path / "cases.csv"
    pd.DataFrame({"model_key": ["llama-3.1-8b", "llama-3p1-8b"], "gpu_key": ["h100-sxm"] * 2,
                  "precision_key": ["fp8"] * 2, "tp": [1, 1], "isl": [1000, 1000], "osl": [1000, 1000]}
                 ).to_csv(p, index=False)
    with caplog.at_level(logging.WARNING, logger="tokenmargin"):
        df = read_cases(p)
    assert list(df.model_key) == ["llama-3p1-8b"] * 2
    assert _alias_lines(caplog) == [f"cases file '{p}': model key 'llama-3.1-8b' is an alias of 'llama-3p1-8b' "
                                    f"(dotted keys cannot be addressed in overrides); use 'llama-3p1-8b'"]
    out = predict_frame(df, catalog.load_efficiency())
    assert (out.skipped_reason == "").all() and out.predicted_output_tok_s_per_gpu.gt(0).all()
    assert out.predicted_output_tok_s_per_gpu.iloc[0] == out.predicted_output_tok_s_per_gpu.iloc[1]


def test_bundled_tables_keep_old_names_and_map_them_silently(caplog):
    assert "llama-3.3-70b" in set(pd.read_csv(BUNDLED_CASES).model_key)  # copies of published tables
    with caplog.at_level(logging.WARNING, logger="tokenmargin"):
        cases = read_cases(BUNDLED_CASES)
        lat = read_latency_cases(BUNDLED_LATENCY)
    assert not _alias_lines(caplog)
    assert not set(cases.model_key) & set(MODEL_ALIASES) and set(lat.model_key) == {"llama-3p1-8b"}
    raw = pd.read_csv(BUNDLED_LATENCY).head(2)  # a frame with old names builds too
    assert build_latency_cases(raw).family.shape == (2,)
