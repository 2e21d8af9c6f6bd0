"""One validation layer: every config value against the accepted values declared on its field.

Each numeric or enumerated field of :mod:`optimizer.schema` declares what it accepts next to its
definition (``accepts(0.9, gt=0, le=1)``); :func:`validate` walks a typed config, checks every leaf
(numbers must also be finite) plus the few rules that tie two fields together (:data:`RULES`), and
raises one :class:`~optimizer.errors.ConfigError` listing every problem with its full key, the
value given and the accepted values. It runs where configs become typed objects
(:func:`optimizer.catalog.to_schema`, catalog loads), on every sweep axis value
(:func:`check_axis_values`) and, through :func:`accepted_values`, on every cases row.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, Callable, Iterator

from optimizer.errors import ConfigError
from optimizer.schema import ACCEPTS, Accepts, RunConfig, SegmentConfig


def _show(v: Any) -> str:
    return repr(v) if isinstance(v, str) else (f"{v:.6g}" if isinstance(v, float) else f"{v}")


def _leaf_problem(key: str, value: Any, rule: Accepts | None, nullable: bool = False) -> str | None:
    if value is None:
        return None  # null is accepted exactly where the field is Optional (OmegaConf enforces that)
    if rule is not None:
        return None if rule.accepts(value) else (f"{key} = {_show(value)}: accepted {rule.describe()}"
                                                 + (" or null" if nullable else ""))
    if isinstance(value, float) and not math.isfinite(value):
        return f"{key} = {value}: accepted a finite number"
    return None


def _walk(obj: Any, prefix: str) -> Iterator[str]:
    """Problems of a dataclass tree (keys are full dotted paths from ``prefix``)."""
    for f in dataclasses.fields(obj):
        key = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(obj, f.name)
        rule = f.metadata.get(ACCEPTS)
        nullable = "Optional[" in str(f.type)
        if dataclasses.is_dataclass(value):
            yield from _walk(value, key)
        elif isinstance(value, dict):
            for k, v in value.items():
                if dataclasses.is_dataclass(v):
                    yield from _walk(v, f"{key}.{k}")
                elif (p := _leaf_problem(f"{key}.{k}", v, rule, nullable)) is not None:
                    yield p
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                if (p := _leaf_problem(f"{key}[{i}]", v, rule)) is not None:
                    yield p
        elif (p := _leaf_problem(key, value, rule, nullable)) is not None:
            yield p


def _segment_rules(key: str, s: SegmentConfig) -> Iterator[str]:
    if s.demand == "constant_elasticity" and isinstance(s.elasticity, (int, float)) and not s.elasticity > 1:
        yield (f"{key}.elasticity = {_show(s.elasticity)}: accepted a number > 1 with demand=constant_elasticity "
               f"(at elasticity <= 1 profit grows without bound as price rises: no finite optimal price); "
               f"or use demand=logit, which accepts any elasticity > 0")
    lo, hi = s.price_floor_ratio, s.price_ceiling_ratio
    if lo is not None and hi is not None and not lo < hi:
        yield f"{key}.price_floor_ratio = {_show(lo)} must be below {key}.price_ceiling_ratio = {_show(hi)}"
    if not s.offers and not s.products:
        yield (f"{key} buys nothing: accepted products (keys of demand.products with volume shares) or offers "
               f"(model keys with reference prices)")


def _run_rules(c: RunConfig) -> Iterator[str]:
    for name, seg in c.demand.segments.items():
        yield from _segment_rules(f"demand.segments.{name}", seg)
    if not c.demand.segments:
        yield "demand.segments is empty: accepted one or more customer segments"


RULES: dict[type, Callable[[Any], Iterator[str]]] = {RunConfig: _run_rules}
"""Rules tying fields together, per top-level config type (field-local rules live on the fields)."""


def problems(obj: Any, prefix: str = "") -> list[str]:
    """Every problem of a typed config ``obj`` (empty when valid)."""
    found = list(_walk(obj, prefix))
    rule = RULES.get(type(obj))
    if rule is not None and not prefix:
        found += list(rule(obj))
    return found


def validate(obj: Any, prefix: str = "", where: str = "") -> Any:
    """Return ``obj`` if valid, else raise one :class:`ConfigError` listing every problem."""
    found = problems(obj, prefix)
    if found:
        head = f"invalid configuration{' in ' + where if where else ''}"
        if len(found) == 1:
            raise ConfigError(f"{head}: {found[0]}")
        raise ConfigError(f"{head} ({len(found)} problems):\n  " + "\n  ".join(found))
    return obj


def field_rule(schema: type, name: str) -> Accepts:
    """The :class:`Accepts` declared on ``schema.name`` (for checking table columns such as cases rows)."""
    for f in dataclasses.fields(schema):
        if f.name == name:
            return f.metadata[ACCEPTS]
    raise KeyError(f"{schema.__name__} has no field {name!r}")


def _locate(obj: Any, parts: list[str]) -> tuple[Any, str] | None:
    """(container, key) of a dotted path in a dataclass / dict tree (dict keys may contain dots; the last
    part may be a new dict key, e.g. a GPU family absent from ``bw_eff``); None when the path is absent."""
    node, i = obj, 0
    while True:
        if dataclasses.is_dataclass(node):
            if not hasattr(node, parts[i]):
                return None
            key, j = parts[i], i + 1
        elif isinstance(node, dict):
            j = next((j for j in range(len(parts), i, -1) if ".".join(parts[i:j]) in node), None)
            if j is None:
                return (node, parts[i]) if i == len(parts) - 1 else None
            key = ".".join(parts[i:j])
        else:
            return None
        if j == len(parts):
            return node, key
        node = node[key] if isinstance(node, dict) else getattr(node, key)
        i = j


def _get_path(obj: Any, parts: list[str]) -> Any:
    at = _locate(obj, parts)
    if at is None:
        return None
    node, key = at
    return node.get(key) if isinstance(node, dict) else getattr(node, key)


def _set_path(obj: Any, parts: list[str], value: Any) -> bool:
    """Set a dotted path inside a dataclass / dict tree in place; False if absent."""
    at = _locate(obj, parts)
    if at is None:
        return False
    node, key = at
    if isinstance(node, dict):
        node[key] = value
    else:
        setattr(node, key, value)
    return True


def check_axis_values(cfg: RunConfig, axis: str, path: str, values: list[float], relative: bool,
                      quality_rule: Accepts | None = None) -> None:
    """Validate one sweep axis: the scenario with each of ``values`` at ``path`` must be valid.

    ``values`` are the distinct grid values or a distribution's two ends (every rule is an
    interval, so its ends decide); ``relative`` values multiply the base value. ``quality.*`` paths
    (catalog quality, not a config field) use ``quality_rule``. Raises a :class:`ConfigError` naming
    the axis, its path, the offending value and the accepted values.
    """
    parts = path.split(".")
    base = None if parts[0] == "quality" else _get_path(cfg, parts)
    bad = []
    for v in values:
        x = float(v) * (float(base) if relative and base is not None else 1.0)
        if parts[0] == "quality":
            if quality_rule is not None and not quality_rule.accepts(x):
                bad.append(f"{path} = {x:g}: accepted {quality_rule.describe()}")
            continue
        if not math.isfinite(x):
            bad.append(f"{path} = {x}: accepted a finite number")
            continue
        trial = copy.deepcopy(cfg)
        if not _set_path(trial, parts, x):
            continue  # an unknown path is reported by the sweep's path resolution
        bad += [p for p in problems(trial) if p.startswith(path) or path in p]
    if bad:
        bad = list(dict.fromkeys(bad))
        more = f"; and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise ConfigError(f"sweep.axes.{axis} (path {path}{', relative' if relative else ''}) takes invalid "
                          f"values: " + "; ".join(bad[:3]) + more)
