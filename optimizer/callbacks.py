"""Hydra callbacks: check the output directory first; gather every multirun job's summary into one table."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from optimizer import io

log = logging.getLogger("tokenmargin")

COLUMNS = ("job", "overrides", "status", "recommended", "margin_usd_per_day", "revenue_usd_per_day",
           "gpu_cost_usd_per_day", "margin_pct", "gpus", "error", "directory")


def gather(sweep_dir: Path) -> pd.DataFrame:
    """One row per job directory under ``sweep_dir`` (a job without a summary is recorded as failed)."""
    rows = []
    for job in sorted((p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()),
                      key=lambda p: (len(p.name), p.name)):
        overrides = OmegaConf.load(job / ".hydra" / "overrides.yaml") if (job / ".hydra" / "overrides.yaml").exists() else []
        row: dict[str, Any] = {"job": job.name, "overrides": " ".join(overrides), "directory": str(job)}
        path = job / "summary.json"
        if not path.exists():
            row.update(status="failed", recommended=False, error="no summary.json (the job crashed)")
        else:
            s = json.loads(path.read_text())
            t = s.get("totals", {})
            row.update(status=s.get("status", "unknown"), recommended=bool(s.get("recommended", False)),
                       error=s.get("error", ""), **{k: t.get(k) for k in ("margin_usd_per_day", "revenue_usd_per_day",
                                                                           "gpu_cost_usd_per_day", "margin_pct", "gpus")})
        rows.append(row)
    return pd.DataFrame(rows, columns=list(COLUMNS))


class GatherSummaries(Callback):
    """At the end of a multirun, write ``summary.parquet`` and ``summary.md`` in the sweep dir."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.exists():
            return
        table = gather(sweep_dir)
        if table.empty:
            return
        io.write_frame(sweep_dir / "summary.parquet", table)
        io.write_text(sweep_dir / "summary.md", "# Multirun summary\n\n"
                      + table.drop(columns=["directory"]).to_markdown(index=False, floatfmt=",.2f") + "\n")
        failed = int((table["status"] != "converged").sum())
        log.info("gathered %d job summaries into %s (%d not converged or failed)", len(table),
                 sweep_dir / "summary.parquet", failed)


class CheckOutputDir(Callback):
    """Before Hydra creates the run (or multirun) directory, make sure it can: an unwritable place
    (a read-only disk, a parent that is a file) gets one clear line and exit code 3, not a traceback."""

    @staticmethod
    def _check(where: str) -> None:
        import os
        import sys
        import tempfile

        from optimizer.errors import EXIT_CODES, io_message

        try:
            Path(where).mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=where)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            print(f"error: the output directory {where} cannot be used: {io_message(e)}", file=sys.stderr)
            sys.exit(EXIT_CODES["io"])

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(str(config.hydra.run.dir))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(str(config.hydra.sweep.dir))
