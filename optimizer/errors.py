"""The exceptions tokenmargin raises for user-facing problems.

A small hierarchy rooted in builtins (cvxportfolio's ``errors.py`` pattern): catching
``ValueError`` still works, and each message names the field, the bad value and what is accepted.
"""

from __future__ import annotations

import errno


class TokenmarginError(Exception):
    """Base class of every tokenmargin error."""


class ConfigError(TokenmarginError, ValueError):
    """A config value is out of range or inconsistent (names the field and the accepted values)."""


class UnknownCatalogEntry(ConfigError, KeyError):
    """A model, GPU or precision key that is not in the catalog (lists the available keys)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnsupportedPrecision(ConfigError):
    """A precision the GPU has no tensor-core support for (names the GPUs that support it)."""


class DoesNotFit(ConfigError):
    """A model whose weights (or one sequence of KV cache) do not fit a deployment."""


class InfeasibleProblem(TokenmarginError):
    """The optimisation problem has no feasible point (names the violated constraint)."""


class SolverFailure(TokenmarginError):
    """The solver did not converge or produced non-finite values."""


class DataError(TokenmarginError, ValueError):
    """An input data file (e.g. a cases CSV) is malformed (names the file and the column)."""


EXIT_CODES = {"ok": 0, "config": 1, "no_plan": 2, "io": 3}
"""Process exit codes of the apps (README "Exit codes"): 1 a configuration or input-data error (also
Hydra's own compose errors), 2 no recommended plan (infeasible, not converged, non-finite), 3 a file
could not be read or written."""


def exit_code(e: BaseException) -> int:
    """The exit code for an error (see :data:`EXIT_CODES`)."""
    if isinstance(e, OSError):
        return EXIT_CODES["io"]
    if isinstance(e, (InfeasibleProblem, SolverFailure)):
        return EXIT_CODES["no_plan"]
    return EXIT_CODES["config"]


def io_message(e: OSError) -> str:
    """One line for an I/O error: what failed, the path and the reason."""
    path = e.filename or ""
    other = f" -> {e.filename2}" if getattr(e, "filename2", None) else ""
    reason = e.strerror or str(e)
    hint = {errno.ENOSPC: " (the disk is full)", errno.EACCES: " (permission denied: choose a writable hydra.run.dir)",
            errno.EROFS: " (read-only file system: choose a writable hydra.run.dir)",
            errno.ENOTDIR: " (a parent of this path is a file, not a directory)"}.get(e.errno or 0, "")
    return f"I/O error on {path}{other}: {reason}{hint}" if path else f"I/O error: {reason}{hint}"
