"""Every option of every config group composes and validates (compose + to_schema; nothing is solved).

The groups and their options are read from conf/: the config groups of each primary config are its
``defaults`` entries, the options the YAML files of each group folder, so a new file or group is
covered without editing this test. The catalog folders (hardware, model, precision, efficiency) are
also loaded one by one with the catalog loaders `tokenmargin` uses for ``fleet.gpus``, ``fleet.precisions``
and the demand ``offers`` and products.
"""

import importlib.util
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from optimizer import catalog
from optimizer.catalog import to_schema
from optimizer.schema import CalibrateConfig, EstimateConfig, RunConfig, register_configs
from optimizer.validate import validate

CONF = Path(__file__).resolve().parent.parent / "conf"
register_configs()

PRIMARIES = {"config": RunConfig, "estimate": EstimateConfig, "calibrate": CalibrateConfig}
"""Primary config -> the schema its entry point validates it against (optimizer/run*.py)."""

LOADERS = {"hardware": catalog.load_hardware, "model": catalog.load_model,
           "precision": catalog.load_precision, "efficiency": catalog.load_efficiency}
"""Catalog folders -> their loader (optimizer/catalog.py)."""

HYDRA_PLUGINS = {"joblib": "hydra_plugins.hydra_joblib_launcher", "ray": "hydra_plugins.hydra_ray_launcher",
                 "submitit_local": "hydra_plugins.hydra_submitit_launcher",
                 "submitit_slurm": "hydra_plugins.hydra_submitit_launcher",
                 "optuna": "hydra_plugins.hydra_optuna_sweeper"}
"""Hydra plugin config a conf/hydra/<group> option extends -> the plugin package that provides it."""


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def groups_of(primary: str) -> list[str]:
    """The config groups the primary config selects in its defaults list (``- demand: ...``)."""
    defaults = OmegaConf.to_container(OmegaConf.load(CONF / f"{primary}.yaml"))["defaults"]
    return [next(iter(d)) for d in defaults if isinstance(d, dict)]


def compose_cfg(primary: str, overrides: list[str], hydra_config: bool = False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=primary, overrides=overrides, return_hydra_config=hydra_config)


GROUP_CASES = [pytest.param(primary, group, option, id=f"{primary}:{group}={option}")
               for primary in PRIMARIES for group in groups_of(primary) for option in options(group)]
CATALOG_CASES = [pytest.param(group, key, id=f"{group}/{key}") for group in LOADERS for key in options(group)]
HYDRA_GROUPS = sorted(p.relative_to(CONF).as_posix() for p in (CONF / "hydra").iterdir() if p.is_dir())
HYDRA_CASES = [pytest.param(group, option, id=f"{group}={option}")
               for group in HYDRA_GROUPS for option in options(group)]


def test_every_group_folder_is_covered():
    """A folder under conf/ is a group of a primary config or a catalog, so the tests below reach it."""
    folders = {p.name for p in CONF.iterdir() if p.is_dir()} - {"hydra"}
    covered = {g for primary in PRIMARIES for g in groups_of(primary)} | set(LOADERS)
    assert folders <= covered, f"conf/ folders no test composes: {sorted(folders - covered)}"
    assert GROUP_CASES and CATALOG_CASES and HYDRA_CASES


@pytest.mark.parametrize("primary, group, option", GROUP_CASES)
def test_group_option_composes_and_validates(primary, group, option):
    cfg = compose_cfg(primary, [f"{group}={option}"])
    c = to_schema(cfg, PRIMARIES[primary])
    # Hydra composed ``cfg`` against the schema, so to_schema skips merging it into the schema again:
    # the same object as with the merge
    assert OmegaConf.get_type(cfg) is PRIMARIES[primary]
    assert c == OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PRIMARIES[primary]), cfg))
    if isinstance(c, RunConfig):  # the catalog entries the run will load exist and validate
        assert c.demand.segments and c.fleet.gpus and c.fleet.precisions
        for gpu in c.fleet.gpus:
            catalog.load_hardware(gpu)
        for prec in c.fleet.precisions:
            catalog.load_precision(prec)
        for segment in c.demand.segments.values():
            assert segment.offers or segment.products
            for model in segment.offers:
                catalog.load_model(model)
            for product in segment.products:
                catalog.load_model(c.demand.products[product].model)


@pytest.mark.parametrize("group, key", CATALOG_CASES)
def test_catalog_entry_loads(group, key):
    entry = validate(LOADERS[group](key), prefix=group)  # the schema at load, then every accepted range
    if group != "efficiency":  # named by its file (a model alias loads the entry it renames)
        assert entry.key == (catalog.canonical_model(key, warn=False) if group == "model" else key)


@pytest.mark.parametrize("group, option", HYDRA_CASES)
def test_hydra_plugin_option_composes(group, option):
    raw = OmegaConf.to_container(OmegaConf.load(CONF / group / f"{option}.yaml"))
    bases = [d for d in raw.get("defaults", []) if isinstance(d, str) and d != "_self_"]
    for base in bases:
        assert base in HYDRA_PLUGINS, f"{group}/{option}.yaml extends '{base}': add its plugin to HYDRA_PLUGINS"
        if importlib.util.find_spec(HYDRA_PLUGINS[base]) is None:
            pytest.skip(f"{HYDRA_PLUGINS[base]} is not installed")
    cfg = compose_cfg("config", [f"{group}={option}"], hydra_config=True)
    assert OmegaConf.select(cfg, group.replace("/", ".") + "._target_")
