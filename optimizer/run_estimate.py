"""The body of `tokenmargin-estimate` (Hydra-free apart from taking the composed config)."""

from __future__ import annotations

import logging
from pathlib import Path

from optimizer import io
from optimizer.catalog import MODEL_ALIASES, canonical_model, to_schema
from optimizer.estimate import estimate_cases, estimate_one
from optimizer.schema import EstimateConfig

log = logging.getLogger("tokenmargin")


def warn_model_alias(choices) -> None:
    """Log the alias line when ``model=`` chose an old (dotted) key; ``choices``: Hydra's runtime choices.

    ``conf/model/<old key>.yaml`` only pulls in the renamed entry, so the composed ``model.key`` is already
    the catalog key and the choice is the one place the typed name survives."""
    choice = (choices or {}).get("model")
    if choice in MODEL_ALIASES:
        canonical_model(choice, where=f"model={choice}")


def _hydra_choices() -> dict:
    """Hydra's config-group choices of this run (empty when ``run`` is called outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    return dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}


def run(cfg, outdir: Path) -> Path:
    """Estimate one deployment (or every row of ``cases``) and publish the CSV into ``outdir``."""
    warn_model_alias(_hydra_choices())
    c: EstimateConfig = to_schema(cfg, EstimateConfig)
    if c.cases:
        out, summary = estimate_cases(c)

        def write(stage: Path) -> None:
            io.write_frame(stage / "predictions.csv", out)
            io.write_json(stage / "error_summary.json",
                          {k: (v.to_dict(orient="records") if hasattr(v, "to_dict") else v) for k, v in summary.items()})

        io.publish(outdir, write, status="predicted")
        path = outdir / "predictions.csv"
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
    else:
        out = estimate_one(c)
        io.check_finite(out, "the estimate")
        io.publish(outdir, lambda stage: io.write_frame(stage / c.output_name, out), status="estimated")
        path = outdir / c.output_name
        print(out.T.rename(columns={0: "value"}).to_markdown())
    print(f"\nwritten: {path}")
    log.info("wrote %s", path)
    return path
