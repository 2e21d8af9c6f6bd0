"""The body of `tokenmargin-estimate` (Hydra-free apart from taking the composed config)."""

from __future__ import annotations

import logging
from pathlib import Path

from optimizer import io
from optimizer.catalog import to_schema
from optimizer.estimate import estimate_cases, estimate_one
from optimizer.schema import EstimateConfig

log = logging.getLogger("tokenmargin")


def run(cfg, outdir: Path) -> Path:
    """Estimate one deployment (or every row of ``cases``) and write the CSV into ``outdir``."""
    c: EstimateConfig = to_schema(cfg, EstimateConfig)
    if c.cases:
        out, summary = estimate_cases(c)
        path = io.write_frame(outdir / "predictions.csv", out)
        print(f"predicted {summary['n_predicted']} rows, skipped {summary['n_skipped']}")
        print(f"median absolute % error: {summary['median_ape_pct']:.1f}   "
              f"mean: {summary['mean_ape_pct']:.1f}")
        print("\nby GPU:\n" + summary["by_gpu"].to_markdown(index=False))
        print("\nby model:\n" + summary["by_model"].to_markdown(index=False))
        skipped = out[out["skipped_reason"] != ""]
        if len(skipped):
            print("\nskipped rows:")
            for i, r in skipped.head(20).iterrows():
                print(f"  row {i}: {r['skipped_reason']}")
        io.write_json(outdir / "error_summary.json",
                      {k: (v.to_dict(orient="records") if hasattr(v, "to_dict") else v)
                       for k, v in summary.items()})
    else:
        out = estimate_one(c)
        path = io.write_frame(outdir / c.output_name, out)
        print(out.T.rename(columns={0: "value"}).to_markdown())
    print(f"\nwritten: {path}")
    log.info("wrote %s", path)
    return path
