"""Wall time of the default ``tokenmargin`` run, plots included, as a user sees it from the shell.

Each measurement is a fresh process running the installed console script (``.venv/bin/tokenmargin``;
where it is missing, or for another checkout, ``python -c`` calling its entry ``optimizer.cli.console_main``,
or ``main`` in a checkout before it; side by side with ``--before``, both checkouts that way) on the
built-in default scenario, with both checkouts' packages byte-compiled first:

* **cold** — an empty JAX cache folder (``TOKENMARGIN_JAX_CACHE`` set to a new temporary folder), so
  every program is traced, exported and compiled;
* **warm** — a second run on that cache: exported programs are deserialised and the compilation
  cache serves their executables;
* **floor** — side by side, ``python -c "import jax, hydra, pandas, matplotlib"``: what any run of
  a JAX + Hydra + pandas tool pays before doing anything; the ratios warm / floor and cold / floor
  are what the code controls.

Goals (issue 11): cold ≤ 8 s and warm ≤ 4 s on the 2-core CI machine, margin unchanged within 0.01 %
of ``--reference-margin`` (the margin before the change measured).

Usage: ``python benchmarks/single_run.py [--repeats 3] [--warm-runs 1] [--before REV] [--reference-margin
51012.60]``; writes
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


def command(code: Path | None = None) -> list[str]:
    """The default run: the installed console script, or the package of another checkout ``code``."""
    exe = ROOT / ".venv" / "bin" / "tokenmargin"
    if exe.exists() and code is None:
        return [str(exe)]
    return [sys.executable, "-c", "from optimizer import cli; getattr(cli, 'console_main', cli.main)()"]


def timed(args: list[str], env: dict, cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    r = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=900)
    return time.perf_counter() - t, r


def compile_bytecode(tree: Path) -> None:
    """Byte-compile a checkout's packages, as their first import on a user's machine leaves them: a
    process started with ``PYTHONDONTWRITEBYTECODE=1`` (as on the CI machine) never writes ``.pyc``
    files, so a fresh worktree would compile every module on every run and the side-by-side
    comparison would favour the checkout that happens to have them."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "optimizer"), str(tree / "kernels")],
                   check=True, capture_output=True)


def one_round(work: Path, k: int, code: Path | None = None, warm_runs: int = 1, tag: str = "after") -> dict:
    """A cold run, ``warm_runs`` warm runs (their median is the round's warm time) and the import
    floor (``code``: a checkout whose package is imported first through PYTHONPATH, e.g. the
    commit before a change, or this one when compared side by side, so both start alike)."""
    cache = work / f"cache-{tag}-{k}"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TOKENMARGIN_JAX_CACHE": str(cache)}
    if code is not None:
        env["PYTHONPATH"] = str(code)
    row = {}
    for mode, n in (("cold", 1), ("warm", warm_runs)):
        times = []
        for i in range(n):
            run_dir = work / f"run-{tag}-{k}-{mode}-{i}"
            secs, r = timed(command(code) + [f"hydra.run.dir={run_dir}", "output.progress=false"], env, code or ROOT)
            if r.returncode != 0:
                raise SystemExit(f"{mode} run failed ({r.returncode}):\n{r.stderr[-3000:]}")
            summary = json.loads((run_dir / "summary.json").read_text())
            times.append(round(secs, 3))
        row[f"{mode}_s"] = statistics.median(times)
        row[f"{mode}_runs_s"] = times
        row[f"{mode}_margin_usd_per_day"] = summary["totals"]["margin_usd_per_day"]
        row[f"{mode}_plots"] = len(summary.get("plots", []))
    secs, r = timed([sys.executable, "-c", "import jax, hydra, pandas, matplotlib.pyplot"], env, ROOT)
    row["floor_s"] = round(secs, 3)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--reference-margin", type=float, default=51012.60,
                    help="margin (USD/day) of the default run before the change measured (51,012.60 since "
                         "commit 2b95c2d; 51,041.27 at ef16148, 48,199 before the hourly model)")
    ap.add_argument("--before", default=None,
                    help="also time this git revision side by side (same machine, same packages), e.g. ef16148")
    ap.add_argument("--warm-runs", type=int, default=1,
                    help="warm runs per round (their median is the round's warm time); a warm run takes a few "
                         "seconds and varies by ±15 %% on a shared 2-core machine")
    args = ap.parse_args()
    before: list[dict] = []
    compile_bytecode(ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for k in range(args.repeats):  # alternate, so machine noise hits both alike
            if args.before:
                tree = Path(tmp) / "before"
                if not tree.exists():
                    subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), args.before], cwd=ROOT,
                                   check=True)
                    compile_bytecode(tree)
                before.append(one_round(Path(tmp), k, tree, args.warm_runs, "before"))
            # side by side, this checkout starts the way the other does (python -c, PYTHONPATH)
            rows.append(one_round(Path(tmp), k, ROOT if args.before else None, args.warm_runs))
        if args.before:
            subprocess.run(["git", "worktree", "remove", "--force", str(Path(tmp) / "before")], cwd=ROOT, check=False)
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
    if before:
        med_b = {k: statistics.median(r[k] for r in before) for k in ("cold_s", "warm_s", "floor_s")}
        result["before"] = {"revision": args.before, "rounds": before, "median": med_b,
                            "after_over_before": {k: round(med[k] / med_b[k], 3) for k in med}}
    io.write_json(OUT / "single_run.json", result)
    lines = ["# Default `tokenmargin` run, wall time from the shell", "",
             f"{args.repeats} rounds on {os.cpu_count()} CPU cores; each round: a cold run (empty JAX cache), "
             f"{args.warm_runs} warm run(s) (same cache; the round's warm time is their median), and the import "
             "floor (`import jax, hydra, pandas, matplotlib.pyplot`).", "",
             "| round | cold s | warm s | floor s | margin USD/day |", "|---:|---:|---:|---:|---:|"]
    lines += [f"| {k} | {r['cold_s']:.2f} | {r['warm_s']:.2f} | {r['floor_s']:.2f} | {r['warm_margin_usd_per_day']:,.2f} |"
              for k, r in enumerate(rows)]
    lines += ["", f"Median: cold **{med['cold_s']:.2f} s** (goal ≤ 8), warm **{med['warm_s']:.2f} s** (goal ≤ 4), "
              f"floor {med['floor_s']:.2f} s; warm / floor {result['warm_over_floor']}, cold / floor "
              f"{result['cold_over_floor']}.", "",
              f"Margin ${margin:,.2f}/day vs ${args.reference_margin:,.2f}/day before: "
              f"{result['margin_change_pct']:+.4f} % (goal within ±0.01 %).", ""]
    if before:
        b = result["before"]
        lines += [f"Side by side with `{args.before}` (each package through PYTHONPATH and `python -c`, same "
                  "packages; rounds alternate):", "", "| round | before cold s | after cold s | before warm s | after warm s |",
                  "|---:|---:|---:|---:|---:|"]
        lines += [f"| {k} | {x['cold_s']:.2f} | {y['cold_s']:.2f} | {x['warm_s']:.2f} | {y['warm_s']:.2f} |"
                  for k, (x, y) in enumerate(zip(before, rows))]
        r = b["after_over_before"]
        lines += ["", f"Median before: cold {b['median']['cold_s']:.2f} s, warm {b['median']['warm_s']:.2f} s; "
                  f"after / before: cold {r['cold_s']}, warm {r['warm_s']}.", ""]
    io.write_text(OUT / "single_run.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
