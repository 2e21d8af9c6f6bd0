"""Catalog access: the YAML files of ``conf/hardware``, ``conf/model``, ``conf/precision``.

Each entry is validated against its schema exactly as Hydra does at compose time (a misspelt key
or a wrong type raises), so a scenario that lists several GPUs or models by key gets the same
checks as ``hardware=h200-sxm`` on the command line.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TypeVar

from omegaconf import OmegaConf

from optimizer.errors import UnknownCatalogEntry
from optimizer.schema import EfficiencyConfig, HardwareConfig, ModelConfig, PrecisionConfig

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
"""The project's Hydra config directory."""

T = TypeVar("T")

_SCHEMAS = {"hardware": HardwareConfig, "model": ModelConfig, "precision": PrecisionConfig,
            "efficiency": EfficiencyConfig}


def available(group: str) -> list[str]:
    """Sorted catalog keys of a config group (YAML file stems)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@functools.lru_cache(maxsize=None)
def _load(group: str, key: str):
    path = CONF_DIR / group / f"{key}.yaml"
    if not path.exists():
        names = ", ".join(available(group))
        raise UnknownCatalogEntry(f"unknown {group} '{key}'. Available {group} names: {names}")
    raw = OmegaConf.load(path)
    raw.pop("defaults", None)
    merged = OmegaConf.merge(OmegaConf.structured(_SCHEMAS[group]), raw)
    return OmegaConf.to_object(merged)


def load_hardware(key: str) -> HardwareConfig:
    """The validated :class:`HardwareConfig` of GPU ``key`` (raises with the list of GPUs)."""
    return _load("hardware", key)


def load_model(key: str) -> ModelConfig:
    """The validated :class:`ModelConfig` of model ``key`` (raises with the list of models)."""
    return _load("model", key)


def load_precision(key: str) -> PrecisionConfig:
    """The validated :class:`PrecisionConfig` of precision ``key``."""
    return _load("precision", key)


def load_efficiency(key: str = "calibrated") -> EfficiencyConfig:
    """The validated :class:`EfficiencyConfig` stored as ``conf/efficiency/<key>.yaml``."""
    return _load("efficiency", key)


def to_schema(cfg, schema: type[T]) -> T:
    """Turn a (Hydra) DictConfig node into its dataclass, re-validating against ``schema``."""
    merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
    return OmegaConf.to_object(merged)
