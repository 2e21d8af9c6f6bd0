"""Sweep speed and quality: the vectorised JAX sweep against a SciPy SLSQP baseline, side by side.

All methods solve the same scenarios of the default problem (the `risk` sweep's Latin-hypercube
design: GPU rents, elasticities, coding volume, Hopper bandwidth efficiency) with the same
objective (relaxed fleet, final pool sharpness) and the same constraints (none are active in the
default scenario).

* JAX: ``run_sweep`` with its default solver, the structured dual solver (``optimizer/solve/dual.py``),
  chunks of ``jit(vmap(assemble → solve))``; scenarios/s over the whole sweep, wall time from the
  call to its return (tracing, compilation, the base-scenario solve and writing the Parquet files
  included), each in a fresh process: the first run (empty compilation cache), a rerun in a new
  process (compilation cache and traced-program exports warm, as on every later ``tokenmargin``
  run) and a rerun in the same process.
* SciPy: ``scipy.optimize.minimize(method="SLSQP")`` one scenario at a time with exact JAX
  gradients (jitted value-and-grad; compiled outside the timing), from two starts: *cold*
  (reference prices, uniform mix and routing) and *warm* (the base scenario's optimum, the same
  warm start the sweep gets). Only a sample of the scenarios is timed; its mean time per scenario
  is extrapolated (stated in the table).

Quality on the sample: each method's margin and its gap to the best known margin — the best of
all methods including the Adam + augmented-Lagrangian solver of single runs (8 starts on the base,
warm-started per scenario) — median and 99th percentile. Over *every* scenario of the JAX sweep:
the certified gap to the dual upper bound.

Usage: ``python benchmarks/sweep_speed.py [--n 1000 10000 100000] [--baseline-sample 40]``;
results go to ``benchmarks/results/sweep_speed.{md,json}`` (``--tag`` adds a suffix, e.g. gpu).
"""

from __future__ import annotations

import argparse
import functools
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
from optimizer.decision import free_tilts, raw_price  # noqa: E402
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


@functools.lru_cache(maxsize=32)
def scipy_functions(shapes: tuple, mask_bytes: tuple):
    """Unflatten plus compiled objective value-and-grad, constraints and their Jacobian for one
    pattern of unmasked decision entries (compiled once, reused by every scenario with that pattern)."""
    masks = [np.frombuffer(m, bool).reshape(shp) for m, shp in zip(mask_bytes, shapes)]
    sizes = [int(m.sum()) for m in masks]
    idx = [jnp.asarray(np.flatnonzero(m.ravel())) for m in masks]

    def unflatten(x):
        parts, o = [], 0
        for shp, ix, n in zip(shapes, idx, sizes):
            parts.append(jnp.zeros(int(np.prod(shp))).at[ix].set(x[o:o + n]).reshape(shp))
            o += n
        return Decision(*parts)

    def f(x, prob, active):
        return -evaluate(unflatten(x), prob, None, active, POOL_SHARPNESS).margin / prob.scale

    def g(x, prob, active):
        b = evaluate(unflatten(x), prob, None, active, POOL_SHARPNESS)
        return -jnp.where(active > 0, b.constraints, -1.0)  # SLSQP wants c(x) >= 0

    margin = jax.jit(lambda x, prob, active: evaluate(unflatten(x), prob, None, active, POOL_SHARPNESS).margin)
    return masks, jax.jit(jax.value_and_grad(f)), jax.jit(g), jax.jit(jax.jacfwd(g)), margin


def scipy_solve(prob, active, warm: Decision | None = None) -> tuple[float, float, bool]:
    """SLSQP on the unmasked decision entries from the reference start (or ``warm``); returns
    (margin, seconds, success)."""
    S, J = prob.demand.ref_price.shape
    R = prob.sheet_ref.shape[0]
    K, G = prob.quality.shape[1], prob.usd_per_gpu_hour.shape[0]
    shapes = ((R, 3), (S, J, K), (S, J, K, G))
    price_mask = np.asarray(free_tilts(prob, np)) > 0
    price_mask[:, 0] = True  # every product's level, and the tilts its buyers identify
    key = tuple((np.asarray(m) > 0).tobytes() for m in (price_mask, prob.mix_mask, prob.route_mask))
    masks, fg, gc, gj, margin_of = scipy_functions(shapes, key)
    start = [raw_price(np.zeros((R, 3)), prob, np, eps=1e-3), np.zeros((S, J, K)), np.zeros((S, J, K, G))]
    if warm is not None:
        start = [np.asarray(warm.price_raw), np.asarray(warm.mix_logits), np.asarray(warm.route_logits)]
    x0 = np.concatenate([s[m] for s, m in zip(start, masks)])
    x0j = jnp.asarray(x0)
    jax.block_until_ready((fg(x0j, prob, active), gc(x0j, prob, active), gj(x0j, prob, active)))  # compile untimed
    cons = [{"type": "ineq", "fun": lambda x: np.asarray(gc(jnp.asarray(x), prob, active)),
             "jac": lambda x: np.asarray(gj(jnp.asarray(x), prob, active))}] if float(np.asarray(active).sum()) > 0 else []
    t = time.perf_counter()
    res = minimize(lambda x: tuple(np.asarray(v, float) for v in fg(jnp.asarray(x), prob, active)), x0, jac=True,
                   method="SLSQP", constraints=cons, options={"maxiter": 1000, "ftol": 1e-10})
    secs = time.perf_counter() - t
    return float(margin_of(jnp.asarray(res.x), prob, active)), secs, bool(res.success)


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


def child(n: int, cache: str, out: str, chunk: int, overrides: list[str]) -> None:
    """One fresh process: run the sweep twice (the second reuses the in-process programs) with the
    given JAX compilation cache (and its traced-program exports); print the walls as JSON and keep
    the first run's rows in ``out``."""
    import json

    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.3)
    cfg = load_cfg(n, [f"sweep.chunk_size={min(chunk, n)}", *overrides])
    walls = []
    for i in range(2):
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            result = run_sweep(cfg, Path(tmp) / "out", Path(tmp) / "store", log=lambda m: None)
            walls.append(time.perf_counter() - t)
            if i == 0:
                result.to_parquet(out)
    print("CHILD " + json.dumps({"walls": walls}))


def run_child(n: int, cache: str, out: str, args) -> list[float]:
    import json
    import subprocess

    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(n), cache, out, "--chunk", str(args.chunk),
           *args.overrides]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    lines = [x for x in r.stdout.splitlines() if x.startswith("CHILD ")]
    if r.returncode != 0 or not lines:
        raise RuntimeError(r.stderr[-3000:])
    return json.loads(lines[-1][6:])["walls"]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--baseline-sample", type=int, default=40)
    ap.add_argument("--chunk", type=int, default=2048)
    ap.add_argument("--tag", default="", help="suffix of the result files (e.g. gpu)")
    ap.add_argument("--no-latency", action="store_true", help="skip the cold / warm single-run timing")
    ap.add_argument("--child", nargs=3, metavar=("N", "CACHE", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the scenario / solver")
    args = ap.parse_args(argv)
    if args.child:
        return child(int(args.child[0]), args.child[1], args.child[2], args.chunk, args.overrides)
    n_max = max(args.n)
    secs, margins, quality, sample = baselines(n_max, args)
    rows, ratios, latency = [], [], {}
    # Three timings per N, each in a fresh Python process (imports not counted): the first run ever
    # (empty JAX compilation cache: tracing and compilation included), a rerun in a new process with
    # the cache warm (what `tokenmargin` does on every later run: the CLI enables the cache), and a
    # second run inside the same process (compiled programs already in memory). Results are written
    # after every N, so a run cut short (e.g. by gpu.sh's time limit) keeps what it measured.
    for n in sorted(args.n):
        with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as tmp:
            cold, in_process = run_child(n, cache, f"{tmp}/rows.parquet", args)
            warm, _ = run_child(n, cache, f"{tmp}/rows_warm.parquet", args)
            result = pd.read_parquet(f"{tmp}/rows.parquet")
        r = {"scenarios": n,
             "first run: wall s": round(cold, 2), "first run: scenarios/s": round(n / cold, 1),
             "rerun, new process: wall s": round(warm, 2), "rerun, new process: scenarios/s": round(n / warm, 1),
             "rerun, same process: wall s": round(in_process, 2),
             "rerun, same process: scenarios/s": round(n / in_process, 1),
             "converged %": round(100 * float(result["converged"].mean()), 2),
             "certified gap median %": round(100 * float(result["optimality_gap_bound"].median()), 4),
             "certified gap p99 %": round(100 * float(result["optimality_gap_bound"].quantile(0.99)), 4)}
        rows.append(r)
        ratio = {"scenarios": n}
        for name in ("scipy_cold", "scipy_warm"):
            ratio[f"{name} s/scenario (sample)"] = round(secs[name], 4)
            for run in ("first run", "rerun, new process", "rerun, same process"):
                ratio[f"x {name}: {run}"] = round(r[f"{run}: scenarios/s"] * secs[name], 1)
        ratios.append(ratio)
        if n == n_max:  # quality: the JAX sweep's rows of the sampled scenarios against the other methods
            margins["jax_dual"] = result["margin_usd_per_day"].to_numpy()[sample]
            best = np.max(np.stack(list(margins.values())), axis=0)
            for name, m in margins.items():
                gap = (best - m) / np.abs(best) * 100
                quality[f"{name}_gap_median_pct"] = round(float(np.median(gap)), 4)
                quality[f"{name}_gap_p99_pct"] = round(float(np.percentile(gap, 99)), 4)
        write_report(rows, ratios, quality, latency, args.tag)
    if not args.no_latency:
        latency = single_run_latency()
        write_report(rows, ratios, quality, latency, args.tag)
    return {"speed": rows, "ratios": ratios, "quality": quality}


def baselines(n: int, args) -> tuple[dict, dict, dict, np.ndarray]:
    """SciPy SLSQP (cold and warm start) and the Adam solver on a sample of the N-scenario design:
    (seconds per scenario, margins per method, success rates, sample indices)."""
    from optimizer.solve import relaxed_task
    from optimizer.solve.auglag import multistart
    from optimizer.solve.choose import auglag_of
    from optimizer.sweep.batch import chunk_program

    cfg = load_cfg(n, [f"sweep.chunk_size={min(args.chunk, n)}", *args.overrides])
    base, pools, labels = scenario_inputs(cfg)
    names = list(cfg.sweep.axes)
    axes = axes_of(cfg.sweep)
    targets = [resolve_path(axes[k].path, labels) for k in names]
    rel = [axes[k].relative for k in names]
    plan = design(cfg.sweep)
    sample = np.linspace(0, n - 1, min(args.baseline_sample, n)).astype(int)
    values = jnp.asarray(plan.iloc[sample].to_numpy(float))
    base_prob = assemble(base, pools)
    active = jnp.asarray(active_mask(labels, base_prob, fixed_fleet=False))
    solver = auglag_of(cfg.solver)
    warm, _ = multistart(solver, relaxed_task(base_prob, active), cfg.solver.starts, cfg.solver.seed)
    adam = chunk_program(targets, rel, solver, 1, None, False)(base, values, pools, active, warm.decision, None)
    build = jax.jit(lambda v: assemble(apply_axes(base, targets, rel, v), pools))
    margins = {"adam_al": np.asarray(adam.margin)}
    secs, quality = {}, {"sample": int(len(sample))}
    for name, start in (("scipy_cold", None), ("scipy_warm", warm.decision)):
        m_all, s_all, ok_all = [], [], []
        for i in range(len(sample)):
            m, sec, ok = scipy_solve(build(values[i]), active, start)
            m_all.append(m)
            s_all.append(sec)
            ok_all.append(ok)
        margins[name] = np.asarray(m_all)
        secs[name] = float(np.mean(s_all))
        quality[f"{name}_success_pct"] = round(100 * float(np.mean(ok_all)), 1)
    return secs, margins, quality, sample


def write_report(rows: list, ratios: list, quality: dict, latency: dict, tag: str) -> None:
    """Print and write ``benchmarks/results/sweep_speed[_tag].{md,json}`` (atomically)."""
    md = ("# Sweep speed: JAX vectorised sweep vs SciPy SLSQP\n\n"
          f"devices: {[str(d) for d in jax.devices()]}; CPU cores: {os.cpu_count()}; scenarios: default problem, "
          "`risk` Latin-hypercube design.\n"
          "JAX wall time is `run_sweep` from call to return in a fresh process (Python imports not counted): "
          "tracing, compilation, the base-scenario solve, every chunk and writing Parquet. *First run*: empty JAX "
          "compilation cache. *Rerun, new process*: the cache (and the traced-program exports beside it) warm, as on "
          "every later `tokenmargin` run. *Rerun, same process*: programs already in memory. SciPy time is the mean "
          "per scenario on the sample, extrapolated (speed ratio = JAX scenarios/s × SciPy s/scenario).\n\n"
          + pd.DataFrame(rows).to_markdown(index=False)
          + "\n\n## Speed ratio to SciPy SLSQP (cold start: reference prices; warm start: the base optimum)\n\n"
          + pd.DataFrame(ratios).to_markdown(index=False)
          + "\n\n## Quality on the sampled scenarios (gap to the best margin of all methods, %)\n\n"
          + pd.DataFrame([quality]).T.rename(columns={0: "value"}).to_markdown() + "\n"
          + ("\n## Single run of `tokenmargin` (default scenario, wall from the shell)\n\n"
             + pd.DataFrame([latency]).to_markdown(index=False) + "\n" if latency else ""))
    print(md)
    out = ROOT / "benchmarks" / "results"
    suffix = f"_{tag}" if tag else ""
    io.write_text(out / f"sweep_speed{suffix}.md", md)
    io.write_json(out / f"sweep_speed{suffix}.json", {"speed": rows, "ratios": ratios, "quality": quality,
                                                       "latency": latency, "devices": [str(d) for d in jax.devices()]})

if __name__ == "__main__":
    main()
