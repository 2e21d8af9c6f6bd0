"""Hydra multirun: job summaries gathered into one table; launchers (basic, joblib, submitit local)."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
FAST = ["output.plots=false", "solver.integer_fleet=false", "solver.starts=2"]


def multirun(tmp_path: Path, *args: str, timeout=600, cache: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TOKENMARGIN_JAX_CACHE": cache or str(tmp_path / "jax-cache")}
    return subprocess.run([sys.executable, "-c", "from optimizer.cli import main; main()", "-m", *args, *FAST,
                           f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow  # CI time (hours added to the model); in the nightly command (README)
def test_basic_multirun_records_a_failed_job_and_goes_on(tmp_path, cli_jax_cache):
    # $0.01/day cannot pay for the demand left even at the price ceilings (about $0.9/day of GPUs;
    # $1/day is feasible in the continuous relaxation, which the dual solver finds)
    r = multirun(tmp_path, "fleet.budget_usd_per_day=0.01,200000", "time=single", cache=cli_jax_cache)
    assert r.returncode == 0, r.stderr[-3000:]
    table = pd.read_parquet(tmp_path / "sweep" / "summary.parquet")
    assert list(table["status"]) == ["infeasible", "converged"]
    assert "daily GPU budget" in table.loc[0, "error"]
    assert table.loc[1, "margin_usd_per_day"] > 0 and bool(table.loc[1, "recommended"])
    assert (tmp_path / "sweep" / "1" / "plan.csv").exists() and not (tmp_path / "sweep" / "0" / "plan.csv").exists()
    assert "Multirun summary" in (tmp_path / "sweep" / "summary.md").read_text()


# both launchers run in the nightly command only (README, 35 s each on 2 cores); so does the basic multirun above
@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["local", "slurm-local"])
def test_launchers_run_jobs_in_separate_processes(tmp_path, launcher, cli_jax_cache):
    extra = ["hydra.launcher.n_jobs=2"] if launcher == "local" else []
    r = multirun(tmp_path, f"hydra/launcher={launcher}", "experiment=default,china-140t", *extra, cache=cli_jax_cache)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    table = pd.read_parquet(tmp_path / "sweep" / "summary.parquet")
    assert len(table) == 2 and (table["status"] == "converged").all()
    assert table["margin_usd_per_day"].iloc[1] > 100 * table["margin_usd_per_day"].iloc[0]  # China scale


@pytest.mark.slow  # 50 s on 2 cores; in the nightly command (README)
def test_optuna_searches_strategic_choices(tmp_path):
    pytest.importorskip("optuna")
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    r = multirun(tmp_path, "hydra/sweeper=strategy", "hydra.sweeper.n_trials=3")
    assert r.returncode == 0, r.stderr[-3000:]
    import yaml

    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert best["best_params"]["fleet"] in ("default", "hopper", "blackwell")
    table = pd.read_parquet(tmp_path / "sweep" / "summary.parquet")
    assert best["best_value"] == pytest.approx(table["margin_usd_per_day"].max(), rel=1e-6)


def _loopback_only_namespace() -> bool:
    import shutil

    if not shutil.which("unshare"):
        return False
    r = subprocess.run(["unshare", "--net", "sh", "-c", "ip link set lo up 2>/dev/null || true; echo ok"],
                       capture_output=True, text=True)
    return r.returncode == 0 and "ok" in r.stdout


def test_ray_launcher_on_loopback_only(tmp_path):
    pytest.importorskip("ray")
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    if not _loopback_only_namespace():
        pytest.skip("cannot create a network namespace with only loopback (unshare --net)")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    cmd = (f"ip link set lo up; {sys.executable} -c 'from optimizer.cli import main; main()' -m hydra/launcher=ray "
           f"+hydra.launcher.ray.init.num_cpus=2 +hydra.launcher.ray.init._node_ip_address=127.0.0.1 "
           f"+hydra.launcher.ray.init.include_dashboard=false experiment=default,china-140t "
           + " ".join(FAST) + f" hydra.sweep.dir={tmp_path / 'sweep'}")
    r = subprocess.run(["unshare", "--net", "sh", "-c", cmd], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(pd.read_parquet(tmp_path / "sweep" / "summary.parquet")) == 2
