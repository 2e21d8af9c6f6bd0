"""Nothing wrong gets out: every value validated with its key, plans published as a unit, exit codes,
the README's own command lines, and property tests over random valid and invalid inputs."""

import copy
import dataclasses
import errno
import importlib.util
import json
import math
import os
import re
import shlex
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optimizer import cli, io
from optimizer.catalog import to_schema
from optimizer.errors import EXIT_CODES, ConfigError, DataError, SolverFailure
from optimizer.problem import scenario_inputs
from optimizer.schema import (ACCEPTS, AxisConfig, CalibrateConfig, EstimateConfig, RunConfig, SweepConfig,
                              register_configs)
from optimizer.sweep import check_axes, design, axes_of
from optimizer.validate import problems, validate
from tests.scenarios import run_config, segment

ROOT = Path(__file__).resolve().parent.parent
CONF = str(ROOT / "conf")
register_configs()


def compose_app(name: str, overrides: list[str], hydra: bool = False):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name=name, overrides=overrides, return_hydra_config=hydra)


SCHEMA = {"config": RunConfig, "estimate": EstimateConfig, "calibrate": CalibrateConfig}


@pytest.mark.parametrize("override, key, accepted", [
    ("fleet.price_usd_per_gpu_hour.b200=-1", "fleet.price_usd_per_gpu_hour.b200", ">= 0"),
    ("fleet.budget_usd_per_day=-100", "fleet.budget_usd_per_day", "> 0 or null"),
    ("efficiency.mem_util=1.5", "efficiency.mem_util", "(0, 1]"),
    ("efficiency.bw_eff.hopper=nan", "efficiency.bw_eff.hopper", "(0, 1]"),
    ("efficiency.matmul_share.cdna3=1.5", "efficiency.matmul_share.cdna3", "(0, 1]"),
    ("solver.starts=0", "solver.starts", "an integer >= 1"),
    ("demand.segments.consumer_chat.elasticity=inf", "demand.segments.consumer_chat.elasticity", "> 0"),
    ("demand.segments.consumer_chat.input_tokens_per_day=nan", "demand.segments.consumer_chat.input_tokens_per_day",
     "> 0"),
    ("demand.segments.consumer_chat.quality_sensitivity=-1", "demand.segments.consumer_chat.quality_sensitivity",
     ">= 0"),
    ("fleet.gpu_caps.b200=-5", "fleet.gpu_caps.b200", ">= 0 or null"),
    ("fleet.capex_budget_usd=inf", "fleet.capex_budget_usd", "> 0 or null"),
    ("fleet.peak_utilization=0", "fleet.peak_utilization", "(0, 1]"),
    ("sweep.samples=0", "sweep.samples", ">= 1"),
    ("solver.method=fast", "solver.method", "'auto', 'dual', 'auglag'"),
    ("demand.segments.consumer_chat.tier=gold", "demand.segments.consumer_chat.tier", "'interactive', 'batch'"),
])
def test_bad_values_name_the_key_the_value_and_the_accepted_range(override, key, accepted):
    with pytest.raises(ConfigError) as e:
        to_schema(compose_app("config", [override]), RunConfig)
    msg = str(e.value)
    assert key in msg and accepted in msg and override.split("=")[1] in msg.lower()


def test_estimate_and_calibrate_values_and_the_schema_option():
    with pytest.raises(ConfigError, match=r"efficiency.bw_eff.hopper = nan"):
        to_schema(compose_app("estimate", ["efficiency.bw_eff.hopper=nan"]), EstimateConfig)
    with pytest.raises(ConfigError, match=r"speculative.acceptance = 1.5: accepted a number in \[0, 1\]"):
        to_schema(compose_app("estimate", ["speculative.acceptance=1.5"]), EstimateConfig)
    with pytest.raises(ConfigError, match="model.key is missing.*available: deepseek-v3"):
        to_schema(compose_app("estimate", ["model=base_model"]), EstimateConfig)
    with pytest.raises(ConfigError, match="steps = 0"):
        to_schema(compose_app("calibrate", ["steps=0"]), CalibrateConfig)


def test_several_problems_are_listed_together_and_cross_field_rules():
    cfg = run_config({"chat": segment(elasticity=0.8, price_floor_ratio=2.0, price_ceiling_ratio=1.5)},
                     budget_usd_per_day=-1.0)
    found = problems(cfg)
    assert any("fleet.budget_usd_per_day = -1" in p for p in found)
    assert any("demand.segments.chat.elasticity = 0.8: accepted a number > 1 with demand=constant_elasticity" in p
               for p in found)
    assert any("price_floor_ratio = 2 must be below" in p for p in found)
    with pytest.raises(ConfigError, match=r"\(3 problems\)"):
        validate(cfg)


def test_gpu_maps_accept_every_catalog_gpu_without_plus_and_rent_zero_means_free():
    c = to_schema(compose_app("config", ["fleet.gpus=[h200-sxm,b200]", "fleet.gpu_caps.b200=200",
                                         "fleet.price_usd_per_gpu_hour.b200=0", "fleet.budget_usd_per_day=30000"]),
                  RunConfig)
    assert c.fleet.gpu_caps["b200"] == 200 and c.fleet.gpu_caps["mi300x"] is None
    numbers, _, labels = scenario_inputs(c)
    rent = dict(zip(labels.gpus, np.asarray(numbers.usd_per_gpu_hour)))
    assert rent["b200"] == 0.0  # free, not replaced by the catalog's $5.98
    assert rent["h200-sxm"] == pytest.approx(3.59)  # null: the catalog price
    assert labels.has_gpu_cap == (False, True)
    with pytest.raises(ConfigError, match="names GPU 'mi300x', which is not in fleet.gpus"):
        scenario_inputs(to_schema(compose_app("config", ["fleet.gpu_caps.mi300x=4"]), RunConfig))


def test_sweep_axis_values_are_validated_like_single_runs():
    cfg = to_schema(compose_app("config", ["sweep=what-if", "sweep.axes.chat_elasticity.linspace=[-1,1.5,3]"]),
                    RunConfig)
    with pytest.raises(ConfigError, match=r"sweep.axes.chat_elasticity .*elasticity = -1: accepted a number > 0"):
        check_axes(cfg, axes_of(cfg.sweep), design(cfg.sweep))
    cfg = to_schema(compose_app("config", ["sweep=risk"]), RunConfig)
    check_axes(cfg, axes_of(cfg.sweep), design(cfg.sweep))  # the shipped sweep is valid
    base = run_config({"chat": segment(elasticity=2.0)})
    for axis, msg in [(AxisConfig(path="fleet.price_usd_per_gpu_hour.h100-sxm", uniform=[-1.0, 2.0]), ">= 0"),
                      (AxisConfig(path="demand.segments.chat.elasticity", values=[0.5, 3.0]), "> 1 with demand"),
                      (AxisConfig(path="demand.segments.chat.elasticity", values=[0.2, 1.0], relative=True),
                       "elasticity = 0.4"),
                      (AxisConfig(path="efficiency.mem_util", values=[0.5, 1.2]), "(0, 1]"),
                      (AxisConfig(path="quality.llama-3p1-8b.fp8", values=[0.9, 1.1]), "(0, 1]"),
                      # an efficiency axis of a family no fleet GPU is in changed nothing (a swing of 0)
                      (AxisConfig(path="efficiency.flops_eff.cdna3", values=[0.2, 0.3]),
                       "sweeps GPU family 'cdna3', which no GPU of fleet.gpus is in (h100-sxm: hopper), so it "
                       "changes nothing; accepted families here: hopper")]:
        sw = SweepConfig(name="t", axes={"a": axis}, mode="sample" if axis.uniform else "grid", samples=4)
        with pytest.raises(ConfigError, match=re.escape(msg)):
            check_axes(base, axes_of(sw), design(sw))


def _readme_commands() -> list[str]:
    """Every `tokenmargin...` command line in the README's code blocks (comments stripped)."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, re.S)
    lines = []
    for b in blocks:
        for line in b.splitlines():
            line = line.strip()
            m = re.search(r"(?:^|\s|/)(tokenmargin(?:-estimate|-calibrate)?)(\s.*)?$", line.split(" #")[0])
            if m and not line.startswith("#"):
                lines.append(m.group(1) + (m.group(2) or ""))
    return lines


def _first_of_each_list(arg: str) -> str:
    """A multirun override's first value (``a=x,y`` -> ``a=x``; brackets and braces kept whole)."""
    key, _, value = arg.partition("=")
    depth, out = 0, ""
    for ch in value:
        depth += ch in "[{("
        depth -= ch in "]})"
        if ch == "," and depth == 0:
            break
        out += ch
    return f"{key}={out}"


def test_every_readme_command_line_composes_and_validates(tmp_path):
    commands = _readme_commands()
    assert len(commands) >= 20, commands
    ran = 0
    for line in commands:
        words = shlex.split(line)
        app = {"tokenmargin": "config", "tokenmargin-estimate": "estimate", "tokenmargin-calibrate": "calibrate"}[words[0]]
        args = [w for w in words[1:] if w not in ("-m", "--multirun", "...") and "=" in w]
        args = [_first_of_each_list(a) if "-m" in words else a for a in args]
        hydra = any(a.lstrip("+").startswith("hydra") for a in args)
        if "hydra/launcher=ray-cluster" in args and importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None:
            continue  # the optional `ray` extra is not installed here (its launcher config needs the plugin)
        cfg = compose_app(app, args, hydra=hydra)
        c = to_schema({k: v for k, v in cfg.items() if k != "hydra"} if hydra else cfg, SCHEMA[app])
        if app == "config" and c.sweep.axes:
            check_axes(c, axes_of(c.sweep), design(c.sweep))
        if app == "estimate" and not c.cases and ran == 0:  # run the first estimate line end to end
            from optimizer.run_estimate import run

            run(cfg, tmp_path)
            ran += 1
            assert io.check_finite(pd.read_csv(tmp_path / c.output_name), "estimate") is not None
            assert json.loads((tmp_path / io.MANIFEST).read_text())["complete"]
    assert ran == 1


def test_publish_writes_a_unit_and_retires_earlier_outputs(tmp_path, monkeypatch):
    (tmp_path / "plan.csv").write_text("old plan\n")
    (tmp_path / "summary.json").write_text("{}")
    (tmp_path / "my_notes.png").write_text("a user's own file")  # not an output name: never moved

    def write(stage):
        io.write_text(stage / "plan.csv", "new plan\n")
        io.write_json(stage / "summary.json", {"status": "converged"})

    io.publish(tmp_path, write, status="converged")
    assert (tmp_path / "plan.csv").read_text() == "new plan\n"
    assert (tmp_path / ".previous" / "plan.csv").read_text() == "old plan\n"
    assert (tmp_path / "my_notes.png").exists()
    man = json.loads((tmp_path / io.MANIFEST).read_text())
    assert man["complete"] and set(man["files"]) == {"plan.csv", "summary.json"}
    assert not list(tmp_path.glob(".staging-*"))

    # the disk fills while renaming the files in: nothing half-published stays, no manifest
    real = os.replace
    calls = {"n": 0}

    def full(src, dst):
        calls["n"] += 1
        if calls["n"] == 7:  # 2 staged writes, 3 earlier files moved aside, then the 2nd rename in
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real(src, dst)

    monkeypatch.setattr(io.os, "replace", full)
    with pytest.raises(OSError):
        io.publish(tmp_path, write, status="converged")
    monkeypatch.setattr(io.os, "replace", real)
    assert not (tmp_path / io.MANIFEST).exists() and not (tmp_path / "plan.csv").exists()
    assert not list(tmp_path.glob(".staging-*"))


@pytest.mark.parametrize("error, code, status", [
    (ConfigError("fleet.x = 1: accepted ..."), EXIT_CODES["config"], "config_error"),
    (DataError("cases file 'x': column 'isl' ..."), EXIT_CODES["config"], "config_error"),
    (SolverFailure("no recommended plan"), EXIT_CODES["no_plan"], "no_plan"),
    (OSError(errno.ENOSPC, "No space left on device", "/x/plan.csv"), EXIT_CODES["io"], "io_error"),
])
def test_guard_exit_codes_and_failed_summary(tmp_path, monkeypatch, capsys, error, code, status):
    (tmp_path / "plan.csv").write_text("an earlier good plan\n")
    monkeypatch.setattr(cli, "_output_dir", lambda: tmp_path)
    monkeypatch.setattr(cli, "_in_multirun", lambda: False)

    def fail(cfg, outdir):
        raise error

    with pytest.raises(SystemExit) as e:
        cli._guard(fail, None)
    assert e.value.code == code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    if isinstance(error, OSError):
        assert "/x/plan.csv" in err and "disk is full" in err
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["status"] == status and not s["recommended"]
    assert not (tmp_path / "plan.csv").exists()  # the earlier plan was moved aside, not left looking current
    assert (tmp_path / ".previous" / "plan.csv").exists()


def test_cli_exit_codes_for_a_bad_value_and_an_unusable_run_directory(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TOKENMARGIN_JAX_CACHE": "off"}
    exe = str(Path(sys.executable).parent / "tokenmargin")
    bad = subprocess.run([exe, "fleet.budget_usd_per_day=-100",
                          f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert bad.returncode == EXIT_CODES["config"], bad.stderr
    assert "error: invalid configuration: fleet.budget_usd_per_day = -100" in bad.stderr
    assert "Traceback" not in bad.stderr
    (tmp_path / "afile").write_text("")
    io_bad = subprocess.run([exe, f"hydra.run.dir={tmp_path / 'afile' / 'run'}"],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    assert io_bad.returncode == EXIT_CODES["io"], io_bad.stderr
    assert "cannot be used" in io_bad.stderr and "Traceback" not in io_bad.stderr


def test_cases_rows_are_validated(tmp_path):
    from optimizer.cases import read_cases

    p = tmp_path / "c.csv"
    p.write_text("gpu_key,model_key,precision_key,isl,osl,concurrency\n"
                 "h200-sxm,llama-3p3-70b,fp8,inf,1000,4\nh200-sxm,llama-3p3-70b,fp8,1000,1000,0.5\n")
    with pytest.raises(DataError, match=r"column 'isl' accepts a number > 0 or blank; 1 row\(s\) do not \(line 2: inf\)"):
        read_cases(p)
    p.write_text("gpu_key,model_key,precision_key,isl,osl,concurrency\nh200-sxm,llama-3p3-70b,fp8,1000,1000,0.5\n")
    with pytest.raises(DataError, match=r"column 'concurrency' accepts a number >= 1 or blank"):
        read_cases(p)
    p.write_text("")
    with pytest.raises(DataError, match="is empty"):
        read_cases(p)


# ---- property tests -------------------------------------------------------------------------------

NUMERIC_FIELDS = [  # (path into a RunConfig, its Accepts)
    (("fleet", "budget_usd_per_day"), None), (("fleet", "peak_utilization"), None), (("fleet", "daily_utilization"), None),
    (("fleet", "max_replica_gpus"), None), (("solver", "starts"), None), (("solver", "learning_rate"), None),
    (("solver", "penalty"), None), (("efficiency", "mem_util"), None), (("efficiency", "step_overhead_ms"), None),
    (("efficiency", "ep_imbalance"), None), (("demand", "segments", "chat", "elasticity"), None),
    (("demand", "segments", "chat", "input_tokens_per_day"), None), (("demand", "segments", "chat", "peak_to_mean"), None),
    (("demand", "segments", "chat", "cached_share"), None), (("demand", "segments", "chat", "tpot_ms"), None),
    (("demand", "segments", "chat", "min_quality"), None), (("demand", "segments", "chat", "ref_market_share"), None),
]


def _rule(obj, name):
    return next(f.metadata[ACCEPTS] for f in dataclasses.fields(obj) if f.name == name)


def _invalid_for(rule):
    """Values outside ``rule``: non-finite ones and ones just across each bound."""
    out = [math.nan, math.inf, -math.inf]
    for b in (rule.gt, rule.ge):
        if b is not None:
            out += [b - 1.0, b - 1e-3] if rule.ge is not None and b == rule.ge else [b, b - 1.0]
    for b in (rule.lt, rule.le):
        if b is not None:
            out += [b + 1e-3, b + 1.0] if rule.le is not None and b == rule.le else [b, b + 1.0]
    return out


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(NUMERIC_FIELDS), st.data())
def test_property_any_invalid_value_is_an_error_naming_the_field(field, data):
    path, _ = field
    cfg = copy.deepcopy(run_config({"chat": segment(demand="logit", elasticity=1.5)}))  # catalog objects are shared
    node = cfg
    for p in path[:-1]:
        node = node[p] if isinstance(node, dict) else getattr(node, p)
    rule = _rule(node, path[-1])
    value = data.draw(st.sampled_from(_invalid_for(rule)))
    if rule.integer and math.isfinite(value):
        value = int(math.floor(value))
    setattr(node, path[-1], value)
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert ".".join(path) in str(e.value) and rule.describe() in str(e.value)


@pytest.fixture(scope="module")
def property_sweep_base():
    return run_config({"chat": segment(demand="logit", elasticity=1.5),
                       "batch": segment(tier="batch", elasticity=2.0, volume=5e9)},
                      gpus=("h100-sxm", "h200-sxm"), precisions=("fp8",), gpu_caps={"h100-sxm": 40.0})


@settings(max_examples=4, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.floats(1.05, 6.0), st.floats(0.0, 12.0), st.floats(0.02, 50.0), st.floats(0.0, 200.0)),
                min_size=8, max_size=8))
def test_property_random_valid_scenarios_export_finite_and_converged_means_feasible(tmp_path_factory, property_sweep_base,
                                                                                    rows):
    from optimizer.sweep import run_sweep

    cols = list(zip(*rows))
    axes = {"eps": AxisConfig(path="demand.segments.chat.elasticity", values=list(cols[0])),
            "rent": AxisConfig(path="fleet.price_usd_per_gpu_hour.h200-sxm", values=list(cols[1])),
            "vol": AxisConfig(path="demand.segments.chat.input_tokens_per_day", values=list(cols[2]), relative=True),
            "cap": AxisConfig(path="fleet.gpu_caps.h100-sxm", values=list(cols[3]))}
    # sample mode over explicit values: one scenario per drawn row set (8 rows, one compiled chunk shape)
    cfg = replace(property_sweep_base, sweep=SweepConfig(name="prop", axes=axes, mode="sample", samples=8,
                                                         chunk_size=8, resume=False))
    out = tmp_path_factory.mktemp("prop")
    res = run_sweep(cfg, out, out / "store", log=lambda *_: None)
    assert len(res) == 8
    ok = res[res["converged"]]
    num = ok.select_dtypes("number").drop(columns=["margin_upper_bound_usd_per_day", "optimality_gap_bound"])
    assert np.isfinite(num.to_numpy(float)).all()  # no NaN or inf in a converged row
    assert (ok["violation"] <= 1e-3).all() and ok["whole_fleet_feasible"].all()
    assert (ok["gpus[h100-sxm]"] <= ok["cap"] * (1 + 1e-4) + 1e-3).all()  # the solvers' feasibility tolerance
    stored = pd.read_parquet(out / "sweep.parquet")
    assert len(stored) == 8 and list(stored["converged"]) == list(res["converged"])


def test_plan_flags_price_at_bound_and_whole_fleet():
    """Closed cases of :func:`optimizer.sweep.plan_flags` (jitted): prices at either bound, and a capped pool
    that can (3.5 GPUs of 1-GPU replicas under a cap of 3.5: round down to 3) or cannot (0.4 GPUs of a
    1-GPU replica under a cap of 0.4; 6 GPUs of 8-GPU replicas under a cap of 6) be made whole."""
    import jax
    import jax.numpy as jnp
    from types import SimpleNamespace as NS

    from optimizer.plan import price_bound_note
    from optimizer.sweep import plan_flags

    lo, hi = math.log(0.02), math.log(50.0)

    def flags(gpus, rep, cap, mu=(1.0, 0.02, 50.0)):
        # three single-buyer products whose sheets sit at the multipliers ``mu`` of their references
        b = NS(sheet=jnp.asarray(mu)[:, None] * jnp.ones((3, 3)), gpus=jnp.asarray(gpus, float).reshape(1, 1, 1),
               period_gpus=jnp.asarray(gpus, float).reshape(1, 1, 1, 1), gpu_cost=jnp.asarray(gpus * 2.0 * 24.0))
        prob = NS(log_mu_lo=jnp.full(3, lo), log_mu_hi=jnp.full(3, hi), sheet_ref=jnp.ones((3, 3)),
                  flow_product=jnp.asarray([[0, 1, 2]]), tp=jnp.asarray(rep, float).reshape(1, 1, 1),
                  gpu_cap=jnp.asarray([cap], float), usd_per_gpu_hour=jnp.asarray([2.0]),
                  on_demand_ratio=jnp.asarray([1e6]), idle_ratio=jnp.asarray([0.0]), on_demand_cap=jnp.zeros((1, 0)),
                  budget_usd_per_day=jnp.asarray(1e30), capex_budget_usd=jnp.asarray(1e30), capex_per_gpu=jnp.asarray([0.0]))
        at, ok = jax.jit(lambda b_, p_: plan_flags(NS(**b_), NS(**p_)))(vars(b), vars(prob))
        return list(np.asarray(at)[0]), bool(ok)

    assert flags(3.5, 1, 1e30) == ([0, -1, 1], True)  # uncapped: round up to 4
    assert flags(3.5, 1, 3.5)[1]  # capped: round down to 3 replicas
    assert not flags(0.4, 1, 0.4)[1]  # less than one replica within the cap
    assert not flags(6.0, 8, 6.0)[1]
    assert flags(16.0, 8, 16.0)[1]
    assert price_bound_note(0.02, lo, hi) == "floor (0.02x reference)"
    assert price_bound_note(50.0, lo, hi) == "ceiling (50x reference)" and price_bound_note(1.3, lo, hi) == ""
