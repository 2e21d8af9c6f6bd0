"""The exceptions tokenmargin raises for user-facing problems.

A small hierarchy rooted in builtins (cvxportfolio's ``errors.py`` pattern): catching
``ValueError`` still works, and each message names the field, the bad value and what is accepted.
"""

from __future__ import annotations


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
