"""A battery of bad and unusual inputs, run as a new user would, each outcome classified.

Every case runs the real command line in a fresh process (`tokenmargin`, `tokenmargin-estimate`)
and is classified from its exit code, stderr and files:

- ``clear``: exit 1-3 with one ``error:`` line naming the expected field / path (no traceback);
- ``handled``: exit 0 with a correct result (the check of the case holds);
- ``wrong``: exit 0 where an error was expected, or a result that fails its check;
- ``traceback``: a Python traceback; ``unclear``: an error that does not name what is wrong;
  ``hung``: no answer within the time limit.

Usage: ``python benchmarks/bad_inputs.py``; writes ``benchmarks/results/bad_inputs.{md,json}``.
Takes about 10 minutes on the 2-core CI machine (each case is a new process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from optimizer import io  # noqa: E402

BIN = Path(sys.executable).parent
FAST = ["output.plots=false", "solver.starts=2", "solver.integer_fleet=false"]


def _csv(d: Path, name: str, text: str) -> str:
    p = d / name
    p.write_text(text)
    return str(p)


def cases(d: Path) -> list[dict]:
    """(app, overrides, expected key in the error or None for a success, check on the run directory)."""
    hdr = "gpu_key,model_key,precision_key,isl,osl,output_tok_s_per_gpu\n"
    run = [
        ("fleet.price_usd_per_gpu_hour.b200=-1", "fleet.price_usd_per_gpu_hour.b200"),
        ("fleet.price_usd_per_gpu_hour.h100-sxm=nan", "fleet.price_usd_per_gpu_hour.h100-sxm"),
        ("fleet.budget_usd_per_day=-100", "fleet.budget_usd_per_day"),
        ("fleet.budget_usd_per_day=inf", "fleet.budget_usd_per_day"),
        ("fleet.capex_budget_usd=0", "fleet.capex_budget_usd"),
        ("efficiency.mem_util=1.5", "efficiency.mem_util"),
        ("efficiency.bw_eff.hopper=nan", "efficiency.bw_eff.hopper"),
        ("efficiency.ep_imbalance=0.5", "efficiency.ep_imbalance"),
        ("efficiency.step_overhead_ms=-1", "efficiency.step_overhead_ms"),
        ("solver.starts=0", "solver.starts"),
        ("solver.outer_steps=0", "solver.outer_steps"),
        ("solver.learning_rate=-0.1", "solver.learning_rate"),
        ("solver.tol_feasibility=nan", "solver.tol_feasibility"),
        ("demand.segments.consumer_chat.elasticity=-1", "demand.segments.consumer_chat.elasticity"),
        ("demand.segments.consumer_chat.elasticity=nan", "demand.segments.consumer_chat.elasticity"),
        ("demand.segments.consumer_chat.input_tokens_per_day=inf", "demand.segments.consumer_chat.input_tokens_per_day"),
        ("demand.segments.consumer_chat.quality_sensitivity=nan", "demand.segments.consumer_chat.quality_sensitivity"),
        ("demand.segments.consumer_chat.ref_market_share=1", "demand.segments.consumer_chat.ref_market_share"),
        ("demand.segments.consumer_chat.cached_share=1", "demand.segments.consumer_chat.cached_share"),
        ("demand.segments.consumer_chat.peak_to_mean=0.5", "demand.segments.consumer_chat.peak_to_mean"),
        ("demand.segments.consumer_chat.tpot_ms=0", "demand.segments.consumer_chat.tpot_ms"),
        ("demand.segments.consumer_chat.min_quality=1.5", "demand.segments.consumer_chat.min_quality"),
        ("demand.segments.consumer_chat.demand=linear", "demand.segments.consumer_chat.demand"),
        ("demand.segments.consumer_chat.tier=gold", "demand.segments.consumer_chat.tier"),
        ("demand.segments.consumer_chat.offers.llama-3p3-70b.input_usd_per_mtok=0",
         "demand.segments.consumer_chat.offers.llama-3p3-70b.input_usd_per_mtok"),
        ("fleet.gpu_caps.b200=-3", "fleet.gpu_caps.b200"),
        ("fleet.gpu_caps.mi300x=4", "fleet.gpu_caps.mi300x"),
        ("fleet.peak_utilization=1.2", "fleet.peak_utilization"),
        ("fleet.daily_utilization=0", "fleet.daily_utilization"),
        ("fleet.max_replica_gpus=0", "fleet.max_replica_gpus"),
        ("fleet.cost.mode=lease", "fleet.cost.mode"),
        ("fleet.cost.pue=0.5", "fleet.cost.pue"),
        ("fleet.gpus=[h900]", "h900"),
        ("fleet.precisions=[fp16]", "fleet.precisions"),
        ("sweep=what-if sweep.axes.chat_elasticity.linspace=[-1,1.5,3]", "sweep.axes.chat_elasticity"),
        ("sweep=what-if sweep.axes.rent_b200.linspace=[-4,10,13]", "sweep.axes.rent_b200"),
        ("sweep=risk sweep.samples=0", "sweep.samples"),
        ("sweep=risk solver.method=fast", "solver.method"),
        ("demand.segments.consumer_chat.price_floor_ratio=3 demand.segments.consumer_chat.price_ceiling_ratio=2",
         "price_floor_ratio"),
        (f"hydra.run.dir={d / 'afile' / 'run'}", "cannot be used"),
        ("experiment=china-140t demand.products.deepseek-v3-off-peak.hours=[25:00-01:00]",
         "demand.products.deepseek-v3-off-peak.hours"),
        ("experiment=china-140t demand.products.deepseek-v3-off-peak.off_peak_of=deepseek-v3-batch",
         "demand.products.deepseek-v3-off-peak.tier"),
        ("experiment=china-140t demand.products.deepseek-v3-off-peak.hours=[00:00-24:00]",
         "demand.products.deepseek-v3-off-peak.hours"),
        # on-demand rents for a GPU the catalog offers none: below its reserved rent (were clipped to it)
        ("fleet.gpus=[mi325x,b200] sweep.name=od "
         "+sweep.axes.od={path:fleet.on_demand_usd_per_gpu_hour.mi325x,values:[1.0,1.5]}",
         "on-demand rent of mi325x below its reserved rent"),
        # a day of hourly loads with hour 23 forgotten (was stretched over 24 hours)
        ("demand.segments.consumer_chat.profile="
         + _csv(d, "day23.csv", "hour,load_vs_mean\n" + "".join(f"{h},1\n" for h in range(23))),
         "missing hours [23]"),
    ]
    (d / "afile").write_text("")
    est = [
        ("model=base_model", "model.key"),
        ("efficiency.bw_eff.hopper=nan", "efficiency.bw_eff.hopper"),
        ("speculative.acceptance=2", "speculative.acceptance"),
        ("model=llama-3p3-70b tp=3", "tp=3"),
        ("model=deepseek-v3 hardware=h800 gpus=144 tp=1 ep=7", "ep=7 must divide the replica's gpus=144"),
        ("gpus=0", "gpus"),
        ("precision=fp4", "precision 'fp4'"),
        ("isl=-5", "isl"),
        ("isl=inf", "isl"),
        ("cases=/nonexistent/cases.csv", "does not exist"),
        (f"cases={_csv(d, 'empty.csv', '')}", "is empty"),
        (f"cases={_csv(d, 'inf.csv', hdr + 'h200-sxm,llama-3p3-70b,fp8,inf,1000,3000' + chr(10))}", "column 'isl'"),
        (f"cases={_csv(d, 'neg.csv', hdr + 'h200-sxm,llama-3p3-70b,fp8,1000,-5,3000' + chr(10))}", "column 'osl'"),
        (f"cases={_csv(d, 'cols.csv', 'gpu,model' + chr(10) + 'h200,x' + chr(10))}", "lacks column"),
    ]
    good_run = [  # unusual but valid: must work, and give the right answer
        ("fleet.gpus=[h200-sxm,b200] fleet.gpu_caps.b200=200 fleet.budget_usd_per_day=30000",
         # within the solvers' 1e-4 feasibility tolerance (a relaxed fleet here: FAST turns the integer repair off)
         lambda s: s["recommended"] and s["gpus_by_type"].get("b200", 0) <= 200 * (1 + 1e-4)
         and s["totals"]["gpu_cost_usd_per_day"] <= 30000 * (1 + 1e-4)),
        # the same with whole replicas (the integer stage tightens the binding limits and re-solves):
        # every limit kept exactly
        ("fleet.gpus=[h200-sxm,b200] fleet.gpu_caps.b200=200 fleet.budget_usd_per_day=30000 solver.integer_fleet=true",
         lambda s: s["recommended"] and s["gpus_by_type"].get("b200", 0) <= 200
         and s["totals"]["gpu_cost_usd_per_day"] <= 30000),
        ("fleet.gpus=[h100-sxm,b200] fleet.price_usd_per_gpu_hour.b200=0",
         lambda s: s["recommended"]),
        ("demand.products.llama-70b.input_usd_per_mtok=0.5",  # a product's list price (segments buy products)
         lambda s: s["recommended"]),
        ("fleet.gpus=[mi325x,b200]",  # one GPU type without an on-demand rent beside one with it
         lambda s: s["recommended"]),
    ]
    good_est = [
        ("model=llama-3.3-70b hardware=h200-sxm precision=fp8", "alias"),
        ("model=deepseek-v3 hardware=h200-sxm precision=fp8 isl=4383 osl=1211 target.tpot_ms=40", ""),
        ("model=deepseek-v3 hardware=h800 precision=fp8 gpus=144 tp=1 ep=144", ""),  # EP144: redundant expert slots
    ]
    out = [{"app": "tokenmargin", "args": FAST + a.split(" "), "expect": k} for a, k in run]  # the case's value wins
    out += [{"app": "tokenmargin-estimate", "args": a.split(" "), "expect": k} for a, k in est]
    out += [{"app": "tokenmargin", "args": FAST + a.split(" "), "expect": None, "check": c} for a, c in good_run]
    out += [{"app": "tokenmargin-estimate", "args": a.split(" "), "expect": None, "warn": w} for a, w in good_est]
    return out


def classify(case: dict, d: Path, i: int) -> dict:
    outdir = d / f"run{i}"
    args = list(case["args"])
    if not any(a.startswith("hydra.run.dir=") for a in args):
        args.append(f"hydra.run.dir={outdir}")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    try:
        r = subprocess.run([str(BIN / case["app"]), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=600)
    except subprocess.TimeoutExpired:
        return {"outcome": "hung", "detail": "no answer in 600 s"}
    err = r.stderr
    last = next((ln for ln in err.splitlines() if ln.startswith("error:")), err.strip().splitlines()[-1:] or [""])
    last = last if isinstance(last, str) else last[0]
    if "Traceback" in err:
        return {"outcome": "traceback", "rc": r.returncode, "detail": err.strip().splitlines()[-1][:200]}
    if case["expect"] is not None:
        if r.returncode == 0:
            return {"outcome": "wrong", "rc": 0, "detail": "exit 0 where an error was expected"}
        if case["expect"] in err:
            return {"outcome": "clear", "rc": r.returncode, "detail": last[:200]}
        return {"outcome": "unclear", "rc": r.returncode, "detail": (last or err[-200:])[:200]}
    if r.returncode != 0:
        return {"outcome": "wrong", "rc": r.returncode, "detail": last[:200]}
    if "check" in case:
        s = json.loads((outdir / "summary.json").read_text())
        ok = case["check"](s) and (outdir / io.MANIFEST).exists()
        return {"outcome": "handled" if ok else "wrong", "rc": 0, "detail": f"margin {s['totals']['margin_usd_per_day']}"}
    if case.get("warn") and case["warn"] not in err + r.stdout:  # log lines go to Hydra's console handler
        return {"outcome": "unclear", "rc": 0, "detail": "no alias message"}
    return {"outcome": "handled", "rc": 0, "detail": "estimate written"}


def main() -> dict:
    rows = []
    with tempfile.TemporaryDirectory() as t:
        d = Path(t)
        for i, case in enumerate(cases(d)):
            res = classify(case, d, i)
            rows.append({"app": case["app"], "args": " ".join(a for a in case["args"] if a not in FAST), **res})
            print(f"{res['outcome']:9s} {rows[-1]['args'][:90]}  | {res.get('detail', '')[:110]}", flush=True)
    df = pd.DataFrame(rows)
    counts = df["outcome"].value_counts().to_dict()
    summary = {"tried": len(df), **{k: int(counts.get(k, 0)) for k in
                                    ("clear", "handled", "wrong", "traceback", "unclear", "hung")}}
    md = ("# Bad and unusual inputs\n\n" + pd.DataFrame([summary]).to_markdown(index=False) + "\n\n"
          + df.to_markdown(index=False) + "\n")
    io.write_text(ROOT / "benchmarks" / "results" / "bad_inputs.md", md)
    io.write_json(ROOT / "benchmarks" / "results" / "bad_inputs.json", {"summary": summary, "rows": rows})
    print(summary)
    return summary


if __name__ == "__main__":
    main()
