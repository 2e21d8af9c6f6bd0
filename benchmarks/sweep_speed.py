"""Sweep speed and quality: the vectorised JAX sweep against a SciPy SLSQP baseline, side by side.

Both methods solve the same scenarios of the default problem (the `risk` sweep's Latin-hypercube
design: GPU rents, elasticities, coding volume, Hopper bandwidth efficiency), with the same
objective (relaxed fleet, final pool sharpness), the same start (reference prices, uniform mix and
routing) and the same constraints (the scenario's active ones, none by default).

* JAX: ``run_sweep`` — chunks of ``jit(vmap(assemble → solve))``; scenarios/s measured on the
  whole sweep (compile included, and steady state from the chunks after the first).
* SciPy: ``scipy.optimize.minimize(method="SLSQP")`` one scenario at a time with exact JAX
  gradients (jitted value-and-grad and constraint Jacobian). Only a sample of the scenarios is
  timed and its per-scenario time extrapolated (stated in the table).

Quality: each method's margin on the sampled scenarios and its gap to the best known margin (best
of both), median and 99th percentile.

Usage: ``python benchmarks/sweep_speed.py [--n 1000 10000] [--baseline-sample 20]``; results go to
``benchmarks/results/sweep_speed.{md,json}``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from scipy.optimize import minimize  # noqa: E402

from optimizer import io  # noqa: E402
from optimizer.catalog import to_schema  # noqa: E402
from optimizer.constraints import active_mask  # noqa: E402
from optimizer.objective import POOL_SHARPNESS, Decision, evaluate  # noqa: E402
from optimizer.problem import assemble, scenario_inputs  # noqa: E402
from optimizer.schema import RunConfig, register_configs  # noqa: E402
from optimizer.sweep import apply_axes, axes_of, design, resolve_path, run_sweep  # noqa: E402


def load_cfg(n: int, overrides: list[str]) -> RunConfig:
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["sweep=risk", f"sweep.samples={n}", "sweep.resume=false",
                                                       "output.plots=false", *overrides])
    return to_schema(cfg, RunConfig)


def scipy_solve(prob, active) -> tuple[float, float, bool]:
    """SLSQP on the unmasked decision entries; returns (margin, seconds, success)."""
    S, J = prob.demand.ref_price.shape
    K, G = prob.quality.shape[1], prob.usd_per_gpu_hour.shape[0]
    masks = [np.asarray(prob.demand.offer_mask) > 0, np.asarray(prob.mix_mask) > 0, np.asarray(prob.route_mask) > 0]
    shapes = [(S, J), (S, J, K), (S, J, K, G)]
    sizes = [int(m.sum()) for m in masks]
    lo, hi = np.asarray(prob.log_mu_lo)[:, None], np.asarray(prob.log_mu_hi)[:, None]
    pos = np.clip((0.0 - lo) / (hi - lo), 1e-3, 1 - 1e-3)
    start = [np.broadcast_to(np.log(pos) - np.log1p(-pos), (S, J)), np.zeros((S, J, K)), np.zeros((S, J, K, G))]
    x0 = np.concatenate([s[m] for s, m in zip(start, masks)])
    idx = [jnp.asarray(np.flatnonzero(m.ravel())) for m in masks]

    def unflatten(x):
        parts, o = [], 0
        for shp, ix, n in zip(shapes, idx, sizes):
            parts.append(jnp.zeros(int(np.prod(shp))).at[ix].set(x[o:o + n]).reshape(shp))
            o += n
        return Decision(*parts)

    def f(x):
        b = evaluate(unflatten(x), prob, None, active, POOL_SHARPNESS)
        return -b.margin / prob.scale

    def g(x):
        b = evaluate(unflatten(x), prob, None, active, POOL_SHARPNESS)
        return -jnp.where(active > 0, b.constraints, -1.0)  # SLSQP wants c(x) >= 0

    fg = jax.jit(jax.value_and_grad(f))
    gc, gj = jax.jit(g), jax.jit(jax.jacfwd(g))
    fg(jnp.asarray(x0))
    gc(jnp.asarray(x0))
    gj(jnp.asarray(x0))  # compile outside the timing
    cons = [{"type": "ineq", "fun": lambda x: np.asarray(gc(jnp.asarray(x))),
             "jac": lambda x: np.asarray(gj(jnp.asarray(x)))}] if float(np.asarray(active).sum()) > 0 else []
    t = time.perf_counter()
    res = minimize(lambda x: tuple(np.asarray(v, float) for v in fg(jnp.asarray(x))), x0, jac=True, method="SLSQP",
                   constraints=cons, options={"maxiter": 1000, "ftol": 1e-10})
    secs = time.perf_counter() - t
    margin = float(evaluate(unflatten(jnp.asarray(res.x)), prob, None, active, POOL_SHARPNESS).margin)
    return margin, secs, bool(res.success)


def single_run_latency() -> dict:
    """Wall seconds of `tokenmargin` (default scenario) from the shell: cold (empty JAX persistent
    compilation cache) and warm (second run, cache filled)."""
    import subprocess

    out = {}
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as runs:
        env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"), "TOKENMARGIN_JAX_CACHE": cache}
        for name in ("cold", "warm"):
            t = time.perf_counter()
            r = subprocess.run([sys.executable, "-c", "from optimizer.cli import main; main()", "output.progress=false",
                                f"hydra.run.dir={runs}/{name}"], cwd=ROOT, env=env, capture_output=True, text=True)
            out[f"tokenmargin_{name}_s"] = round(time.perf_counter() - t, 2)
            if r.returncode != 0:
                raise RuntimeError(r.stderr[-2000:])
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1000])
    ap.add_argument("--baseline-sample", type=int, default=20)
    ap.add_argument("--chunk", type=int, default=1000)
    ap.add_argument("--no-latency", action="store_true", help="skip the cold / warm single-run timing")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the scenario / solver")
    args = ap.parse_args(argv)
    rows, quality = [], None
    for n in args.n:
        cfg = load_cfg(n, [f"sweep.chunk_size={args.chunk}", *args.overrides])
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            result = run_sweep(cfg, Path(tmp) / "out", Path(tmp) / "store", log=lambda m: None)
            wall = time.perf_counter() - t
        jax_rate = n / wall
        # SciPy on a sample of the same scenarios
        base, pools, labels = scenario_inputs(cfg)
        names = list(cfg.sweep.axes)
        axes = axes_of(cfg.sweep)
        targets = [resolve_path(axes[k].path, labels) for k in names]
        rel = [axes[k].relative for k in names]
        plan = design(cfg.sweep)
        sample = np.linspace(0, n - 1, min(args.baseline_sample, n)).astype(int)
        build = jax.jit(lambda v: assemble(apply_axes(base, targets, rel, v), pools))
        sp_margin, sp_secs, sp_ok = [], [], []
        for i in sample:
            prob = build(jnp.asarray(plan.iloc[i].to_numpy(float)))
            active = jnp.asarray(active_mask(labels, prob, fixed_fleet=False))
            m, s, ok = scipy_solve(prob, active)
            sp_margin.append(m)
            sp_secs.append(s)
            sp_ok.append(ok)
        scipy_rate = 1.0 / float(np.mean(sp_secs))
        ours = result["margin_usd_per_day"].to_numpy()[sample]
        best = np.maximum(ours, np.asarray(sp_margin))
        gap_ours = (best - ours) / np.abs(best) * 100
        gap_sp = (best - np.asarray(sp_margin)) / np.abs(best) * 100
        rows.append({"scenarios": n, "jax_wall_s": round(wall, 2), "jax_scenarios_per_s": round(jax_rate, 2),
                     "scipy_s_per_scenario": round(float(np.mean(sp_secs)), 4),
                     "scipy_scenarios_per_s (extrapolated from sample)": round(scipy_rate, 2),
                     "speed_ratio": round(jax_rate / scipy_rate, 2),
                     "jax_converged_pct": round(100 * float(result["converged"].mean()), 2)})
        quality = {"sample": int(len(sample)), "scipy_success_pct": round(100 * float(np.mean(sp_ok)), 1),
                   "jax_gap_median_pct": round(float(np.median(gap_ours)), 4),
                   "jax_gap_p99_pct": round(float(np.percentile(gap_ours, 99)), 4),
                   "scipy_gap_median_pct": round(float(np.median(gap_sp)), 4),
                   "scipy_gap_p99_pct": round(float(np.percentile(gap_sp, 99)), 4)}
    latency = {} if args.no_latency else single_run_latency()
    speed = pd.DataFrame(rows)
    md = ("# Sweep speed: JAX vectorised sweep vs SciPy SLSQP\n\n"
          f"devices: {[str(d) for d in jax.devices()]}; scenarios: default problem, `risk` Latin-hypercube design.\n"
          "JAX wall time includes compilation. SciPy time is per scenario on a sample, extrapolated.\n\n"
          + speed.to_markdown(index=False) + "\n\n## Quality on the sampled scenarios (gap to best known margin)\n\n"
          + pd.DataFrame([quality]).to_markdown(index=False) + "\n"
          + ("\n## Single run of `tokenmargin` (default scenario, wall from the shell)\n\n"
             + pd.DataFrame([latency]).to_markdown(index=False) + "\n" if latency else ""))
    print(md)
    out = ROOT / "benchmarks" / "results"
    io.write_text(out / "sweep_speed.md", md)
    io.write_json(out / "sweep_speed.json", {"speed": rows, "quality": quality, "latency": latency,
                                              "devices": [str(d) for d in jax.devices()]})
    return {"speed": rows, "quality": quality}


if __name__ == "__main__":
    main()
