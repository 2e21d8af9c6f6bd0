"""Catalog access: the YAML files of ``conf/hardware``, ``conf/model``, ``conf/precision``.

Each entry is validated against its schema exactly as Hydra does at compose time (a misspelt key
or a wrong type raises), so a scenario that lists several GPUs or models by key gets the same
checks as ``hardware=h200-sxm`` on the command line.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import TypeVar

from omegaconf import DictConfig, OmegaConf

from optimizer.errors import UnknownCatalogEntry
from optimizer.schema import EfficiencyConfig, HardwareConfig, ModelConfig, PrecisionConfig

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
"""The project's Hydra config directory."""

T = TypeVar("T")

_SCHEMAS = {"hardware": HardwareConfig, "model": ModelConfig, "precision": PrecisionConfig,
            "efficiency": EfficiencyConfig}


log = logging.getLogger("tokenmargin")

MODEL_ALIASES: dict[str, str] = {
    "llama-3.1-8b": "llama-3p1-8b",
    "llama-3.1-70b": "llama-3p1-70b",
    "llama-3.1-405b": "llama-3p1-405b",
    "llama-3.3-70b": "llama-3p3-70b",
    "qwen2.5-7b": "qwen2p5-7b",
    "qwen2.5-72b": "qwen2p5-72b",
    "deepseek-v3.2": "deepseek-v3p2",
}
"""Old (dotted) model key -> catalog key. A dot in a key splits a Hydra override path
(``demand.segments.chat.offers.llama-3.3-70b.input_usd_per_mtok=...``), so catalog keys follow Fireworks'
model ids ("p" for the decimal point: ``llama-v3p3-70b-instruct``). The old keys keep working wherever a
model key is typed (``model=``, demand ``offers``, cases CSVs, sweep paths) with a warning;
``conf/model/<alias>.yaml`` holds a defaults-only file per alias for ``model=<alias>``."""


def canonical_model(key: str, warn: bool = True, where: str = "") -> str:
    """The catalog key of model ``key`` (itself unless it is an alias in :data:`MODEL_ALIASES`).

    An alias logs one line on the ``tokenmargin`` logger (unless ``warn`` is false), prefixed by ``where``."""
    new = MODEL_ALIASES.get(key)
    if new is None:
        return key
    if warn:
        log.warning("%smodel key '%s' is an alias of '%s' (dotted keys cannot be addressed in overrides); use '%s'",
                    f"{where}: " if where else "", key, new, new)
    return new


def available(group: str) -> list[str]:
    """Sorted catalog keys of a config group (YAML file stems; model aliases are not listed)."""
    skip = MODEL_ALIASES if group == "model" else {}
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if p.stem not in skip)


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
    """The validated :class:`ModelConfig` of model ``key`` (raises with the list of models).

    An old key of :data:`MODEL_ALIASES` loads its catalog entry (and warns)."""
    return _load("model", canonical_model(key))


def load_precision(key: str) -> PrecisionConfig:
    """The validated :class:`PrecisionConfig` of precision ``key``."""
    return _load("precision", key)


def load_efficiency(key: str = "calibrated") -> EfficiencyConfig:
    """The validated :class:`EfficiencyConfig` stored as ``conf/efficiency/<key>.yaml``."""
    return _load("efficiency", key)


def to_schema(cfg, schema: type[T]) -> T:
    """Turn a (Hydra) DictConfig node into its dataclass, re-validated against ``schema`` and every
    field's accepted values (:mod:`optimizer.validate`); raises :class:`ConfigError` naming the key."""
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    from optimizer.errors import ConfigError
    from optimizer.validate import validate

    try:
        # a node Hydra composed against ``schema`` is already typed and checked: merging it into the
        # schema again only repeats that (a noticeable share of a warm run)
        typed = isinstance(cfg, DictConfig) and OmegaConf.get_type(cfg) is schema
        obj = OmegaConf.to_object(cfg if typed else OmegaConf.merge(OmegaConf.structured(schema), cfg))
    except MissingMandatoryValue as e:
        key = getattr(e, "full_key", "") or "?"
        group = key.split(".")[0]
        hint = (f"; pick a catalog entry, e.g. {group}=<name> (available: {', '.join(available(group))})"
                if group in _SCHEMAS and available(group) else "")
        raise ConfigError(f"config value {key} is missing (a 'base_*' option is the schema, not an entry){hint}") \
            from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"invalid configuration: {str(e).splitlines()[0]}"
                          + (f" (key {e.full_key})" if getattr(e, "full_key", None) else "")) from None
    return validate(obj)
