"""Wall time of the default ``tokenmargin`` run, plots included, as a user sees it from the shell.

Each measurement is a fresh process running the installed console script (``.venv/bin/tokenmargin``,
or ``python -c 'from optimizer.cli import main; main()'`` when it is missing) on the built-in
default scenario:

* **cold** — an empty JAX cache folder (``TOKENMARGIN_JAX_CACHE`` set to a new temporary folder), so
  every program is traced, exported and compiled;
* **warm** — a second run on that cache: exported programs are deserialised and the compilation
  cache serves their executables;
* **floor** — side by side, ``python -c "import jax, hydra, pandas, matplotlib"``: what any run of
  a JAX + Hydra + pandas tool pays before doing anything; the ratios warm / floor and cold / floor
  are what the code controls.

Goals (issue 11): cold ≤ 8 s and warm ≤ 4 s on the 2-core CI machine, margin unchanged within 0.01 %
of ``--reference-margin`` (the margin before the solver refactor).

Usage: ``python benchmarks/single_run.py [--repeats 3] [--reference-margin 48199]``; writes
``benchmarks/results/single_run.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from optimizer import io  # noqa: E402

OUT = ROOT / "benchmarks" / "results"


def command() -> list[str]:
    exe = ROOT / ".venv" / "bin" / "tokenmargin"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "from optimizer.cli import main; main()"]


def timed(args: list[str], env: dict, cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    r = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=900)
    return time.perf_counter() - t, r


def one_round(work: Path, k: int) -> dict:
    """A cold run, a warm run and the import floor, side by side."""
    cache = work / f"cache-{k}"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TOKENMARGIN_JAX_CACHE": str(cache)}
    row = {}
    for mode in ("cold", "warm"):
        run_dir = work / f"run-{k}-{mode}"
        secs, r = timed(command() + [f"hydra.run.dir={run_dir}", "output.progress=false"], env, ROOT)
        if r.returncode != 0:
            raise SystemExit(f"{mode} run failed ({r.returncode}):\n{r.stderr[-3000:]}")
        summary = json.loads((run_dir / "summary.json").read_text())
        row[f"{mode}_s"] = round(secs, 3)
        row[f"{mode}_margin_usd_per_day"] = summary["totals"]["margin_usd_per_day"]
        row[f"{mode}_plots"] = len(summary.get("plots", []))
    secs, r = timed([sys.executable, "-c", "import jax, hydra, pandas, matplotlib.pyplot"], env, ROOT)
    row["floor_s"] = round(secs, 3)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--reference-margin", type=float, default=48199.0,
                    help="margin (USD/day) of the default run before the refactor (commit 83a3615)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [one_round(Path(tmp), k) for k in range(args.repeats)]
    med = {k: statistics.median(r[k] for r in rows) for k in ("cold_s", "warm_s", "floor_s")}
    margin = rows[0]["warm_margin_usd_per_day"]
    result = {
        "rounds": rows, "median": med, "machine": {"cpus": os.cpu_count()},
        "warm_over_floor": round(med["warm_s"] / med["floor_s"], 2),
        "cold_over_floor": round(med["cold_s"] / med["floor_s"], 2),
        "margin_usd_per_day": margin,
        "margin_change_pct": round(100 * (margin - args.reference_margin) / args.reference_margin, 4),
        "goals": {"cold_s": 8.0, "warm_s": 4.0, "margin_change_pct": 0.01},
    }
    result["met"] = {"cold": med["cold_s"] <= 8.0, "warm": med["warm_s"] <= 4.0,
                     "margin": abs(result["margin_change_pct"]) <= 0.01}
    io.write_json(OUT / "single_run.json", result)
    lines = ["# Default `tokenmargin` run, wall time from the shell", "",
             f"{args.repeats} rounds on {os.cpu_count()} CPU cores; each round: a cold run (empty JAX cache), a warm "
             "run (same cache), and the import floor (`import jax, hydra, pandas, matplotlib.pyplot`).", "",
             "| round | cold s | warm s | floor s | margin USD/day |", "|---:|---:|---:|---:|---:|"]
    lines += [f"| {k} | {r['cold_s']:.2f} | {r['warm_s']:.2f} | {r['floor_s']:.2f} | {r['warm_margin_usd_per_day']:,.2f} |"
              for k, r in enumerate(rows)]
    lines += ["", f"Median: cold **{med['cold_s']:.2f} s** (goal ≤ 8), warm **{med['warm_s']:.2f} s** (goal ≤ 4), "
              f"floor {med['floor_s']:.2f} s; warm / floor {result['warm_over_floor']}, cold / floor "
              f"{result['cold_over_floor']}.", "",
              f"Margin ${margin:,.2f}/day vs ${args.reference_margin:,.2f}/day before: "
              f"{result['margin_change_pct']:+.4f} % (goal within ±0.01 %).", ""]
    io.write_text(OUT / "single_run.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
