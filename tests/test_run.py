"""`tokenmargin` end to end: presets compose and solve, files are written, failures are reported."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from optimizer.catalog import to_schema
from optimizer.errors import SolverFailure
from optimizer.io import check_finite
from optimizer.run import PLAN_FILES, run
from optimizer.schema import RunConfig, register_configs

ROOT = Path(__file__).resolve().parent.parent
CONF = str(ROOT / "conf")
register_configs()


def compose_run(overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def test_every_preset_and_group_composes():
    for exp in sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")):
        cfg = compose_run([f"experiment={exp}"])
        c = to_schema(cfg, RunConfig)
        assert c.demand.segments and c.fleet.gpus
    for demand in sorted(p.stem for p in (ROOT / "conf" / "demand").glob("*.yaml")):
        to_schema(compose_run([f"demand={demand}"]), RunConfig)
    china = to_schema(compose_run(["experiment=china-140t"]), RunConfig)
    total = sum(s.input_tokens_per_day * (1 + s.osl / s.isl) for s in china.demand.segments.values())
    assert total == pytest.approx(140e12, rel=0.01)  # demand_facts.csv: >140e12 tokens/day, Mar 2026
    assert china.fleet.gpus == ["h200-sxm", "b200"]


def test_the_run_mode_comes_from_the_overrides_and_no_config_sets_it():
    """The CLI reads ``hydra.mode`` from the command line only (one compose per run,
    optimizer/cli.py: _mode_from_overrides), which is exact while no config file sets it."""
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from optimizer.cli import _mode_from_overrides

    for path in (ROOT / "conf").rglob("*.yaml"):
        node = OmegaConf.load(path)
        in_hydra_group = path.parent == ROOT / "conf" / "hydra"  # (its subgroups are hydra.launcher, hydra.sweeper)
        mode = node.get("mode") if in_hydra_group else OmegaConf.select(node, "hydra.mode")
        assert mode is None, f"{path} sets hydra.mode"
    assert _mode_from_overrides(None, "config", ["a=1", "hydra.mode=MULTIRUN"]) == RunMode.MULTIRUN
    assert _mode_from_overrides(None, "config", ["hydra.mode=MULTIRUN", "hydra.mode=RUN"]) == RunMode.RUN
    assert _mode_from_overrides(None, "config", ["x=1,2"]) is None  # Hydra then goes by --multirun
    assert _mode_from_overrides(None, "config", ["hydra.mode=BOGUS"]) is None  # the compose then says why


def test_typo_in_a_segment_fails_at_compose_time():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        compose_run(["demand.segments.consumer_chat.elasticty=1.2"])
    with pytest.raises(ConfigCompositionException):
        compose_run(["demand.segments.consumer_chat.elasticity=high"])


# every preset in the nightly command (README); the default runs end to end every CI in
# test_cli_default_run_writes_plots, and every preset composes and validates in test_config_groups
@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["default", "china-140t", "deepseek-h800"])
def test_presets_solve_and_write_the_plan(tmp_path, experiment):
    cfg = compose_run([f"experiment={experiment}", "output.plots=false", "output.progress=false"])
    summary = run(cfg, tmp_path)
    assert summary["status"] == "converged" and summary["recommended"]
    for name in PLAN_FILES + ("summary.json", "config_resolved.yaml"):
        assert (tmp_path / name).exists(), name
    plan = pd.read_csv(tmp_path / "plan.csv")
    assert {"segment", "model", "input_usd_per_mtok", "cached_input_usd_per_mtok", "output_usd_per_mtok",
            "input_tokens_per_day", "output_tokens_per_day", "revenue_usd_per_day", "precision_mix",
            "served_quality", "gpus_by_type", "peak_utilization", "cost_usd_per_mtok", "margin_usd_per_day",
            "margin_pct"} <= set(plan.columns)
    # the three exports are one table: plan.parquet (typed) read back equals plan.csv and plan.json read back
    # (CSV: empty strings stay strings; JSON keeps 10 significant digits and writes whole floats as ints)
    parquet = pd.read_parquet(tmp_path / "plan.parquet")
    assert len(parquet) == len(plan) > 0
    pd.testing.assert_frame_equal(parquet, pd.read_csv(tmp_path / "plan.csv", keep_default_na=False),
                                  check_exact=False, rtol=1e-12)
    pd.testing.assert_frame_equal(
        parquet, pd.read_json(io.StringIO((tmp_path / "plan.json").read_text()), orient="records"),
        check_dtype=False, check_exact=False, rtol=1e-9)
    s = json.loads((tmp_path / "summary.json").read_text())
    t = s["totals"]
    assert t["margin_usd_per_day"] == pytest.approx(t["revenue_usd_per_day"] - t["gpu_cost_usd_per_day"], abs=0.05)
    assert plan["revenue_usd_per_day"].sum() == pytest.approx(t["revenue_usd_per_day"], rel=1e-6)
    assert plan["cost_usd_per_day"].sum() == pytest.approx(t["gpu_cost_usd_per_day"], rel=1e-4)
    fleet = pd.read_csv(tmp_path / "fleet.csv")
    assert (fleet["replicas"] == fleet["replicas"].round()).all()
    # every pool shows its deployment; a disaggregated pool splits its GPUs into prefill + decode
    assert {"deployment", "replica_gpus", "nodes_per_replica", "tp", "dp", "ep", "disaggregated", "speculation",
            "prefill_gpus", "decode_gpus"} <= set(fleet.columns)
    assert (fleet["deployment"].str.len() > 0).all() and (fleet["replica_gpus"] >= 1).all()
    dis = fleet[fleet["disaggregated"]]
    assert np.allclose(dis["prefill_gpus"] + dis["decode_gpus"], dis["gpus"], rtol=1e-3)
    assert (plan["deployments"].str.len() > 0).sum() >= 1
    if experiment == "deepseek-h800":
        # DeepSeek-V3 at FP8 on 80 GB H800s only fits a multi-node expert-parallel deployment
        assert (fleet["nodes_per_replica"] >= 2).all() and (fleet["ep"] >= 16).all()
    # no float32 noise: JSON money has at most 2 decimals
    for row in json.loads((tmp_path / "plan.json").read_text()):
        assert round(row["revenue_usd_per_day"], 2) == row["revenue_usd_per_day"]


def test_infeasible_result_is_reported_and_no_plan_written(tmp_path):
    # a $0.01/day GPU budget cannot be met even at the highest allowed prices (50x reference), where
    # the demand left needs about $0.9/day of GPUs ($1/day is feasible in the continuous relaxation)
    cfg = compose_run(["output.plots=false", "fleet.budget_usd_per_day=0.01", "solver.integer_fleet=false",
                       "time=single"])
    with pytest.raises(SolverFailure, match="daily GPU budget"):
        run(cfg, tmp_path)
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["status"] == "infeasible" and any("daily GPU budget" in v for v in s["violated_constraints"])
    for name in PLAN_FILES:
        assert not (tmp_path / name).exists()
    # (the dual that checks the augmented Lagrangian's plan gets one step too: either plan is unfinished)
    cfg = compose_run(["output.plots=false", "solver.outer_steps=2", "solver.inner_steps=5", "solver.dual_steps=1",
                       "solver.integer_fleet=false", "solver.method=auglag", "time=single"])
    with pytest.raises(SolverFailure, match="status 'step_limit'"):
        run(cfg, tmp_path)
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["status"] == "step_limit" and not s["recommended"]
    for name in PLAN_FILES:
        assert not (tmp_path / name).exists()


ENTRY_PROBE = """
import atexit, sys, threading, time
from pathlib import Path
from optimizer.cli import ends_the_process
out = Path(sys.argv[1])
def late():
    time.sleep(0.3)
    (out / "thread").write_text("joined")
stop = threading.Event()
def worker():  # a pool's worker (joblib, concurrent.futures): stopped by threading's exit callback
    stop.wait()
    (out / "worker").write_text("stopped")
def app():
    atexit.register(lambda: (out / "atexit").write_text("ran"))
    threading.Thread(target=late).start()
    threading.Thread(target=worker).start()
    threading._register_atexit(stop.set)
    print("printed, not yet flushed", end="")
    sys.exit(int(sys.argv[2]) if sys.argv[2].isdigit() else sys.argv[2] or None)
ends_the_process(app)()
"""


@pytest.mark.parametrize("status, code", [("", 0), ("3", 3), ("a message", 1)])
def test_a_console_entry_ends_the_process_after_its_threads_and_exit_handlers(tmp_path, status, code):
    """The console scripts skip the interpreter's teardown (``optimizer.cli.ends_the_process``), but
    keep what a normal exit does: the exit status, threads joined, ``atexit`` handlers, output flushed."""
    r = subprocess.run([sys.executable, "-c", ENTRY_PROBE, str(tmp_path), status], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == code and r.stdout == "printed, not yet flushed"
    assert (tmp_path / "thread").read_text() == "joined" and (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "worker").read_text() == "stopped"  # (joining it first would hang: timeout)
    assert ("a message" in r.stderr) == (status == "a message")


def test_the_console_scripts_are_the_process_ending_entries():
    """``pyproject.toml`` points each console script at its ``ends_the_process`` wrapper."""
    import tomllib

    from optimizer import cli

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for name, app in (("tokenmargin", cli.main), ("tokenmargin-estimate", cli.estimate_main),
                      ("tokenmargin-calibrate", cli.calibrate_main)):
        module, _, attr = scripts[name].partition(":")
        entry = getattr(cli, attr)
        assert module == "optimizer.cli" and entry is not app and entry.__wrapped__ is app


def test_cli_default_run_writes_plots(tmp_path, cli_jax_cache):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TOKENMARGIN_JAX_CACHE": cli_jax_cache}
    r = subprocess.run([sys.executable, "-c", "from optimizer.cli import main; main()", f"hydra.run.dir={tmp_path}"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "status: converged" in r.stdout
    for png in ("demand_margin_vs_price.png", "cost_per_mtok.png", "fleet.png", "fleet_hourly.png"):
        assert (tmp_path / png).stat().st_size > 1000
    # the figure drawn during the solve is in the plan's manifest, and its scratch folder is gone
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["plots"] == ["demand_margin_vs_price.png", "cost_per_mtok.png", "fleet.png", "fleet_hourly.png"]
    assert set(summary["plots"]) <= set(json.loads((tmp_path / "manifest.json").read_text())["files"])
    assert not list(tmp_path.glob(".staging-*"))
    report = (tmp_path / "plan.md").read_text()
    assert "Pricing plan" in report and "e+0" not in report  # $31,545/day, not 3.155e+04
    # each row's utilisation is its GPUs' busy share where they are counted: within the fleet's caps
    # (0.8 at the interactive peak, 0.9 on the mean load), never above them as a row's own peak over
    # GPUs counted in another period was (the chat row of the batch-sized 8B pool read 1.62)
    plan = pd.read_csv(tmp_path / "plan.csv")
    served = plan[plan["gpus"] > 0]
    assert len(served) and ((served["peak_utilization"] > 0) & (served["peak_utilization"] <= 0.9 + 1e-4)).all(), \
        served[["segment", "model", "gpus", "peak_utilization"]]
    # so is each pool's: the busy share in its busiest period, never below its mean over the day (the
    # 8B pool, sized by the batch it serves at night, read 0.199 at the interactive peak against 0.821)
    pools = pd.read_csv(tmp_path / "fleet.csv")
    assert ((pools["peak_utilization"] > 0) & (pools["peak_utilization"] <= 0.9 + 1e-4)).all(), pools
    assert (pools["peak_utilization"] >= pools["daily_utilization"] - 1e-4).all(), pools


@pytest.mark.slow  # CI time (hours added to the model); in the nightly command (README)
def test_tight_gpu_cap_single_run_is_certified_by_the_dual(tmp_path):
    """Four B200s where the free optimum uses about 260: the structured dual prices the cap; the run
    converges within the cap, below the certified upper bound (the augmented Lagrangian alone, from
    reference prices, ends at its step limit far below it here)."""
    import jax

    from optimizer.constraints import active_mask
    from optimizer.engine import optimize
    from optimizer.solve import relaxed_task
    from optimizer.solve.choose import dual_of

    c = to_schema(compose_run(["fleet.gpu_caps.b200=4", "solver.integer_fleet=false", "solver.starts=2",
                               "time=single"]), RunConfig)  # the dual (auto picks it for one period)
    res = optimize(c)
    assert res.status == "converged"
    b = res.relaxed_breakdown
    g = res.labels.gpus.index("b200")
    assert float(b.gpus.sum((1, 2))[g]) <= 4 * (1 + 1e-4)
    task = relaxed_task(res.prob, active_mask(res.labels, res.prob, False))
    solver = dual_of(c.solver, shared=res.labels.has_shared_products)  # the single run's dual (1,000 steps)
    assert res.stages["relaxed"].method == "dual"
    bound = float(jax.jit(solver.run)(task, solver.init(task)).bound)
    assert float(res.relaxed.bound) == pytest.approx(bound, rel=1e-9)  # the run's own certificate
    assert float(b.margin) <= bound * (1 + 1e-4)  # the bound: per-segment prices (the default shares sheets)
    assert float(res.relaxed.multipliers[g]) > 0  # the cap's shadow price


def test_report_tables_read_as_numbers_a_colleague_writes():
    from optimizer.io import markdown_table, readable_number

    assert [readable_number(v) for v in (31545.37, 66907926.4, 999.96, 999.94, 387.44, 0.016443, 0.0, 3, np.nan,
                                         True, "fp8")] == ["31,545", "66,907,926", "1,000", "999.9", "387.4",
                                                           "0.01644", "0", "3", "", "True", "fp8"]
    table = pd.DataFrame({"gpu": ["h100-sxm", "b200"], "cost_usd_per_day": [5568.8, 31545.37],
                          "cap": [np.nan, 3.0]})
    lines = markdown_table(table.astype(object).where(table.notna(), "no cap")).splitlines()
    assert lines[1] == "|:---------|-------------------:|-------:|"  # numbers right-aligned, words left
    assert lines[2].split("|")[2:4] == ["              5,569 ", " no cap "]
    assert lines[3].split("|")[2:4] == ["             31,545 ", "      3 "]


def test_rows_that_lose_money_are_named_with_whether_their_product_is_shared():
    from optimizer.plan import loss_making
    from optimizer.report import console_summary, markdown_report

    plan = pd.DataFrame({"segment": ["chat", "coding", "rag"], "model": ["dsv3", "dsv3", "llama-70b"],
                         "product": ["dsv3", "dsv3", "rag-contract"], "revenue_usd_per_day": [100.0, 50.0, 20.0],
                         "margin_usd_per_day": [60.0, -70.0, -5.0], "margin_pct": [60.0, -140.0, -25.0]})
    notes = loss_making(plan)
    assert notes == ["coding/dsv3: margin -70 USD/day (-140.0 % of its revenue) at product dsv3, shared with 1 other "
                     "segment(s)", "rag/llama-70b: margin -5 USD/day (-25.0 % of its revenue) at product rag-contract, "
                     "its own"]
    assert loss_making(plan.assign(margin_usd_per_day=[1.0, 2.0, 3.0])) == []
    summary = {"scenario": "s", "status": "converged", "loss_making": notes}
    assert console_summary(summary, None).count("note: loses money") == 2
    shared = "A shared price sheet may keep it for the other buyers' sake"
    md = markdown_report({**summary, "totals": {"margin_usd_per_day": 0.0, "margin_pct": 0.0, "revenue_usd_per_day": 0.0,
                                                "gpu_cost_usd_per_day": 0.0, "gpus": 0.0},
                          "gpus_by_type": {}, "solver": {"relaxed": {"status": "converged", "margin_usd_per_day": 0.0,
                                                                     "method": "dual", "iterations": 1, "gap": None,
                                                                     "wall_s": 0.1}},
                          "violation": 0.0}, plan.assign(gpus_by_type=""), pd.DataFrame(), pd.DataFrame())
    assert md.count("> **Note:** loses money") == 2 and md.count(shared) == 1


def test_a_fleet_mixing_gpus_with_and_without_an_on_demand_rent_is_exported(tmp_path):
    """MI325X has no sourced on-demand rent, B200 has: the fleet table leaves MI325X's blank (it was
    reported as a NaN plan and nothing was exported), and a NaN anywhere else is still refused."""
    cfg = compose_run(["fleet.gpus=[mi325x,b200]", "output.plots=false", "output.progress=false"])
    summary = run(cfg, tmp_path)
    assert summary["status"] == "converged" and summary["recommended"]
    fleet = pd.read_csv(tmp_path / "fleet.csv")
    rent = fleet.set_index("gpu")["on_demand_usd_per_gpu_hour"]
    assert rent.loc[["mi325x"]].isna().all() and (rent.loc[["b200"]] > 0).all()
    with pytest.raises(SolverFailure, match="cost_usd_per_day"):
        check_finite(fleet.assign(cost_usd_per_day=np.nan), "the fleet table", blank_ok=("on_demand_usd_per_gpu_hour",))
    with pytest.raises(SolverFailure, match="on_demand_usd_per_gpu_hour"):
        check_finite(fleet.assign(on_demand_usd_per_gpu_hour=np.inf), "the fleet table",
                     blank_ok=("on_demand_usd_per_gpu_hour",))
