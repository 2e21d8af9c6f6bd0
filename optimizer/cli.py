"""Console entry points: a few lines of Hydra each, calling plain Hydra-free functions."""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import sys
import threading
from pathlib import Path

import hydra
from omegaconf import DictConfig

from optimizer.errors import EXIT_CODES, TokenmarginError, exit_code, io_message
from optimizer.schema import register_configs

register_configs()
log = logging.getLogger("tokenmargin")
CONF = str(Path(__file__).resolve().parent.parent / "conf")


def _output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


def _record_failure(outdir: Path, error: str, status: str) -> None:
    """A failed job's ``summary.json`` (merged over the summary the job published, if any)."""
    from optimizer import io

    path = outdir / "summary.json"
    prior = json.loads(path.read_text()) if path.exists() else {}  # published by this run (e.g. not converged)
    kept = prior.get("status") if prior.get("status") not in (None, "converged") else status
    io.write_json(path, {**prior, "status": kept, "recommended": False, "error": error})


def _guard(fn, cfg):
    """Run ``fn(cfg, outdir)``; a problem prints one clear line and exits with its code
    (:data:`optimizer.errors.EXIT_CODES`: 1 configuration or input error, 2 no recommended plan,
    3 I/O error).

    The job's ``summary.json`` says failed, with the error; in a multirun the other jobs go on.
    """
    from optimizer import io

    outdir = _output_dir()
    try:
        io.retire_outputs(outdir)  # an earlier run's files never look like this run's
        return fn(cfg, outdir)
    except (TokenmarginError, OSError) as e:
        code = exit_code(e)
        msg = io_message(e) if isinstance(e, OSError) else str(e)
        log.error("%s: %s", type(e).__name__, msg)
        print(f"error: {msg}", file=sys.stderr)
        try:
            _record_failure(outdir, msg, "io_error" if code == EXIT_CODES["io"] else
                            "no_plan" if code == EXIT_CODES["no_plan"] else "config_error")
        except OSError as e2:
            print(f"error: could not record the failure either: {io_message(e2)}", file=sys.stderr)
        if _in_multirun():
            return None
        sys.exit(code)


def _mode_from_overrides(self, config_name, overrides):
    """``Hydra.get_mode`` without composing: the run mode a ``hydra.mode=RUN|MULTIRUN`` override asks
    for, else None (Hydra then goes by ``--multirun``). Hydra's own composes the whole config once
    just to read ``hydra.mode`` and again to run, about 0.9 s of a warm run here (Hydra issue #3440;
    the same fix as its PR #3441). Exact for this project: no file under ``conf/`` sets
    ``hydra.mode`` (tests/test_run.py checks)."""
    from hydra.types import RunMode

    for o in reversed(overrides):
        key, _, value = o.lstrip("+~").partition("=")
        if key == "hydra.mode":
            return RunMode.__members__.get(value)  # an unknown value: None, and the compose says why
    return None


def one_compose(app):
    """Run the Hydra app ``app`` with :func:`_mode_from_overrides` as ``Hydra.get_mode`` (restored after)."""
    @functools.wraps(app)
    def run(*args, **kwargs):
        from hydra._internal.hydra import Hydra

        original = Hydra.get_mode
        Hydra.get_mode = _mode_from_overrides
        try:
            return app(*args, **kwargs)
        finally:
            Hydra.get_mode = original

    return run


def with_figure_helper(app):
    """Start the figures' helper process (:func:`optimizer.figures.start_early`) before ``app``
    composes its config, so that the helper's imports overlap this process's."""
    @functools.wraps(app)
    def run(*args, **kwargs):
        from optimizer import figures

        figures.start_early(sys.argv[1:])
        return app(*args, **kwargs)

    return run


@with_figure_helper
@one_compose
@hydra.main(version_base="1.3", config_path=CONF, config_name="config")
def main(cfg: DictConfig) -> float:
    """`tokenmargin`: see optimizer.run. Returns the margin (USD/day) for sweepers such as Optuna;
    NaN when there is no recommended plan (Optuna then records the trial as failed)."""
    from optimizer import runtime

    runtime.configure()
    from optimizer.run import run

    summary = _guard(run, cfg)
    if not summary or not summary.get("recommended"):
        return float("nan")
    return float(summary["totals"]["margin_usd_per_day"])


@one_compose
@hydra.main(version_base="1.3", config_path=CONF, config_name="estimate")
def estimate_main(cfg: DictConfig) -> None:
    """`tokenmargin-estimate`: see optimizer.run_estimate."""
    from optimizer import runtime

    runtime.configure()
    from optimizer.run_estimate import run

    _guard(run, cfg)


@one_compose
@hydra.main(version_base="1.3", config_path=CONF, config_name="calibrate")
def calibrate_main(cfg: DictConfig) -> None:
    """`tokenmargin-calibrate`: see optimizer.run_calibrate."""
    from optimizer import runtime

    runtime.configure()
    from optimizer.run_calibrate import run

    _guard(run, cfg)


def ends_the_process(app):
    """``app`` as a console script's entry point: run it, then do what the interpreter's exit does
    before its teardown — threading's shutdown (its exit callbacks, e.g. joblib's and
    ``concurrent.futures``' executors stopping their workers, then every non-daemon thread joined),
    the exit handlers (``atexit``: logs flushed and closed, file locks released, JAX's backends shut
    down), the output flushed — and end the process with its exit status *without tearing the
    interpreter down*. Freeing the modules of JAX, pandas and matplotlib object by object took about
    0.5 s of a 5–6 s warm run on the 2-core CI machine (``benchmarks/single_run.py``), for memory the
    OS reclaims at once. Only for an entry point: a caller in the same process would never get
    control back (``main`` itself returns). A Python without ``threading._shutdown`` exits normally."""
    @functools.wraps(app)
    def run():
        try:
            app()
            code = 0
        except SystemExit as e:  # Hydra's errors and ours end in sys.exit(code)
            code = e.code
        if code is None:
            code = 0
        elif not isinstance(code, int):  # sys.exit("message"): printed, status 1
            print(code, file=sys.stderr)
            code = 1
        shutdown = getattr(threading, "_shutdown", None)  # what CPython's exit calls first
        if shutdown is None:
            sys.exit(code)
        shutdown()
        atexit._run_exitfuncs()  # then CPython's own exit-handler runner
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe: nothing more to say
                pass
        os._exit(code)

    return run


console_main = ends_the_process(main)
console_estimate = ends_the_process(estimate_main)
console_calibrate = ends_the_process(calibrate_main)
