"""Speed of `tokenmargin-estimate cases=`: rows predicted per second on a large synthetic cases file.

Builds N rows (default 100,000) by cycling over catalog GPUs × models × precisions × shapes, with
a mix of the measured_throughput.csv format (given tp) and the measured_slo_throughput.csv format
(blank deployment columns = best deployment, concurrency or TPOT targets), writes them to a CSV
and times ``read_cases`` + ``predict_frame`` end to end, as ``tokenmargin-estimate cases=`` runs
them (compilation included, then a second call warm). Goal (issue 9): 10⁵ rows in ≤ 30 s on the
2-core CI machine.

Usage: ``python benchmarks/cases_speed.py [--rows 100000]``; writes ``benchmarks/results/cases_speed.{md,json}``.
"""

from __future__ import annotations

import argparse
import itertools
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

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from optimizer import catalog, io  # noqa: E402
from optimizer.cases import predict_frame, read_cases  # noqa: E402

GPUS = ["h100-sxm", "h200-sxm", "b200", "gb200", "h800", "l40s", "mi300x"]
MODELS = ["llama-3.1-8b", "llama-3.3-70b", "qwen3-235b-a22b", "deepseek-v3", "llama-4-scout", "gpt-oss-120b"]
PRECISIONS = ["fp8", "fp4", "bf16", ""]
SHAPES = [(128, 128), (1000, 1000), (1024, 2048), (4383, 1211), (8192, 1024)]


def synthetic(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    combos = list(itertools.product(GPUS, MODELS, PRECISIONS, SHAPES))
    rows = []
    for i in range(n):
        g, m, p, (isl, osl) = combos[i % len(combos)]
        kind = i % 3
        row = {"gpu_key": g, "model_key": m, "precision_key": p, "isl": isl, "osl": osl,
               "num_gpus": [1, 2, 4, 8, 16][rng.integers(5)] if kind else "", "tp": "", "ep": "",
               "concurrency": "", "tpot_ms": "", "output_tok_s_per_gpu": float(rng.uniform(100, 5000))}
        if kind == 1:
            row["concurrency"] = int(rng.choice([1, 8, 64, 256, 1024]))
        elif kind == 2:
            row["tpot_ms"] = float(rng.choice([20, 40, 80]))
        rows.append(row)
    return pd.DataFrame(rows)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    args = ap.parse_args(argv)
    df = synthetic(args.rows)
    eff = catalog.load_efficiency()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "cases.csv"
        df.to_csv(path, index=False)
        t0 = time.perf_counter()
        out = predict_frame(read_cases(path), eff)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        predict_frame(read_cases(path), eff)
        second = time.perf_counter() - t0
    predicted = int(out["predicted_output_tok_s_per_gpu"].notna().sum())
    res = {"rows": args.rows, "predicted": predicted, "skipped": int((out["skipped_reason"] != "").sum()),
           "first_call_s": round(first, 2), "second_call_s": round(second, 2),
           "rows_per_s_first": round(args.rows / first), "goal_s": 30.0, "meets_goal": first <= 30.0}
    md = ("# `tokenmargin-estimate cases=` speed\n\n" + pd.DataFrame([res]).to_markdown(index=False)
          + "\n\nSynthetic rows over " + f"{len(GPUS)} GPUs x {len(MODELS)} models x {len(PRECISIONS)} precisions "
          "(blank = best) x 5 shapes; a third each at max throughput, a fixed concurrency and a TPOT target; "
          "blank deployment columns (best deployment) on two thirds.\n")
    print(md)
    out_dir = ROOT / "benchmarks" / "results"
    io.write_text(out_dir / "cases_speed.md", md)
    io.write_json(out_dir / "cases_speed.json", res)
    return res


if __name__ == "__main__":
    main()
