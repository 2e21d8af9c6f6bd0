"""Measured (or user-supplied) benchmark cases → stacked deployment arrays, and predictions.

Two CSV formats are read (columns are matched by name; other columns are kept untouched):

* ``shared/data/measured_throughput.csv``: ``model_key``, ``gpu_key``, ``precision_key``, ``tp``,
  ``num_gpus``, ``isl``, ``osl`` and the measured ``throughput_per_gpu_tok_s`` (output tok/s per
  GPU at maximum throughput);
* ``shared/data/measured_slo_throughput.csv``: the measured ``output_tok_s_per_gpu``; interactivity
  as ``concurrency`` (sequences in flight over the ``num_gpus``), ``tpot_ms`` or
  ``tokens_per_s_per_user`` (1000 / TPOT); deployment columns ``num_gpus, tp, ep, dp_attention,
  pd_disaggregated, prefill_gpus, decode_gpus, mtp_or_spec``.

Any deployment column may be blank: blank means "the best deployment the tool can find" (of
``num_gpus`` GPUs when that is given): every candidate layout (:mod:`optimizer.deployments`) that
agrees with the given columns is evaluated and the one with the most output tok/s per GPU at the
row's interactivity is kept. ``mtp_or_spec`` reads ``MTP-k`` (the model's sourced MTP acceptance),
``none``/``off``, or blank. TensorRT-LLM's convention is used for ``tp`` with ``dp_attention``: the
``tp`` GPUs run attention data-parallel (attention TP 1). An old dotted ``model_key`` (``llama-3.3-70b``,
kept by the bundled copies of published tables) is read as its catalog key (``optimizer.catalog.MODEL_ALIASES``).

Rows are grouped by (GPU, model, precision, allowed layouts) so the catalog work is done once per
group, and predicted in fixed-size chunks by one compiled ``vmap`` per operating mode.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from kernels.roofline import Deployment
from kernels.serving import Speculation, Workload, max_throughput_point, operating_point, slo_point
from optimizer import catalog
from optimizer.deployments import candidate_layouts, with_draft_lengths
from optimizer.errors import ConfigError, DataError
from optimizer.params import (EfficiencyTable, Layout, build_deployment, build_mtp, check_precision_supported,  # noqa: F401
                              efficiency_at, efficiency_table, stack_trees)
from optimizer.schema import GPU_FAMILIES, EfficiencyConfig
from optimizer.runtime import require_float64

KEY_COLUMNS = ("model_key", "gpu_key")
MEASURED_COLUMNS = ("throughput_per_gpu_tok_s", "output_tok_s_per_gpu")
"""Measured output tok/s per GPU (either name; the first present is used)."""

BUNDLED_CASES = Path(__file__).resolve().parent.parent / "benchmarks" / "data" / "measured_throughput.csv"
"""Copy of shared/data/measured_throughput.csv shipped with the project (the max-throughput calibration set)."""

BUNDLED_SLO_CASES = Path(__file__).resolve().parent.parent / "benchmarks" / "data" / "measured_slo_throughput.csv"
"""Copy of shared/data/measured_slo_throughput.csv (the latency-bound calibration set; see its `derivation`)."""

BUNDLED_LATENCY = Path(__file__).resolve().parent.parent / "benchmarks" / "data" / "measured_online_latency.csv"
"""Finite-rate rows of shared/data/measured_online_serving_latency.csv with catalog keys added."""

LATENCY_COLUMNS = ("model_key", "gpu_key", "precision_key", "tp", "isl", "osl", "tput_req_s", "mean_ttft_ms",
                   "mean_itl_ms")

MODES = ("max", "fixed", "slo")
"""Operating modes: maximum throughput, a fixed concurrency, the largest batch meeting a TPOT."""

CHUNK_ROWS = 4096
"""Rows per compiled prediction call (fixed shape: one compilation per mode and candidate width)."""


def _num(df: pd.DataFrame, col: str) -> np.ndarray:
    if col not in df.columns:
        return np.full(len(df), np.nan)
    return pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)


def _flag(v) -> bool | None:
    if v is None or (isinstance(v, float) and np.isnan(v)) or str(v).strip() == "":
        return None
    s = str(v).strip().lower()
    if s in ("true", "1", "yes", "y"):
        return True
    if s in ("false", "0", "no", "n"):
        return False
    raise DataError(f"a boolean deployment column holds {v!r}; accepted: true/false, 1/0, yes/no or blank")


def read_cases(path: str | Path) -> pd.DataFrame:
    """Read a cases CSV and check its columns (raises :class:`DataError` naming what is missing or bad)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"cases file '{path}' does not exist")
    try:
        df = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"cases file '{path}' is empty; it needs a header with at least "
                        f"{list(KEY_COLUMNS) + ['isl', 'osl']}") from None
    missing = [c for c in KEY_COLUMNS + ("isl", "osl") if c not in df.columns]
    if "precision_key" not in df.columns:
        missing.append("precision_key")
    if missing:
        raise DataError(f"cases file '{path}' lacks column(s) {missing}; required columns: "
                        f"{list(KEY_COLUMNS) + ['precision_key', 'isl', 'osl']} (precision may be blank = best), "
                        f"optional: tp, ep, num_gpus, dp_attention, pd_disaggregated, prefill_gpus, decode_gpus, "
                        f"mtp_or_spec, concurrency, tpot_ms, tokens_per_s_per_user and a measured "
                        f"{' or '.join(MEASURED_COLUMNS)}")
    for col, rule in column_rules().items():
        if col in df.columns:
            check_column(df, col, rule, path)  # a blank isl / osl is a row skipped with its reason
    return canonical_model_keys(df, f"cases file '{path}'", warn=not _bundled(path))


def column_rules() -> dict:
    """Accepted values of each numeric cases column: the rule of the config field it stands for."""
    from optimizer.schema import COUNT, Accepts, EstimateConfig, TargetConfig
    from optimizer.validate import field_rule

    count = Accepts(**COUNT)
    return {"isl": field_rule(EstimateConfig, "isl"), "osl": field_rule(EstimateConfig, "osl"),
            "cached_share": field_rule(EstimateConfig, "cached_share"), "tp": count, "ep": count, "num_gpus": count,
            "prefill_gpus": count, "decode_gpus": count, "concurrency": field_rule(TargetConfig, "concurrency"),
            "tpot_ms": field_rule(TargetConfig, "tpot_ms"), "tokens_per_s_per_user": Accepts(gt=0.0)}


def check_column(df: pd.DataFrame, col: str, rule, path, required: bool = False) -> None:
    """Every value of ``col`` accepted by ``rule`` (blank allowed unless ``required``), else a
    :class:`DataError` naming the file, the column, the first bad rows and values, and the accepted values."""
    raw = df[col]
    v = pd.to_numeric(raw, errors="coerce").to_numpy(float)
    blank = raw.isna().to_numpy()
    ok = rule.accepts_array(v)
    bad = ~ok & (~blank | required)
    if bad.any():
        rows = np.flatnonzero(bad)[:5]
        val = lambda x: repr(x) if isinstance(x, str) else f"{x}"  # noqa: E731
        shown = ", ".join(f"line {i + 2}: {val(raw.iloc[i])}" for i in rows)  # +2: 1-based, after the header
        raise DataError(f"cases file '{path}': column '{col}' accepts {rule.describe()}"
                        + ("" if required else " or blank") + f"; {int(bad.sum())} row(s) do not ({shown}"
                        + (", ..." if bad.sum() > 5 else "") + ")")


def _bundled(path: Path) -> bool:
    """Whether ``path`` is one of the bundled tables (copies of published tables that keep their old model keys)."""
    return path.resolve() in (BUNDLED_CASES, BUNDLED_SLO_CASES, BUNDLED_LATENCY)


def canonical_model_keys(df: pd.DataFrame, where: str = "", warn: bool = True) -> pd.DataFrame:
    """``df`` with old (dotted) model keys in ``model_key`` (:data:`optimizer.catalog.MODEL_ALIASES`) replaced
    by catalog keys: one warning per alias found, prefixed by ``where``; ``df`` itself when there is none."""
    if "model_key" not in df.columns:
        return df
    found = [k for k in pd.unique(df["model_key"].dropna()) if k in catalog.MODEL_ALIASES]
    if not found:
        return df
    out = df.copy()
    out["model_key"] = df["model_key"].replace({k: catalog.canonical_model(k, warn, where) for k in found})
    return out


def read_latency_cases(path: str | Path) -> pd.DataFrame:
    """Read a latency CSV (columns LATENCY_COLUMNS, for :func:`build_latency_cases`), mapping old model keys."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"latency cases file '{path}' does not exist")
    return canonical_model_keys(pd.read_csv(path), f"latency cases file '{path}'", warn=not _bundled(path))


def measured_column(df: pd.DataFrame) -> str | None:
    """The measured-throughput column of a cases frame (None when it has none)."""
    return next((c for c in MEASURED_COLUMNS if c in df.columns), None)


class CaseBatch(NamedTuple):
    """Arrays of the predictable cases of one mode: a table of unique candidate deployments (U) and,
    per row, the indices of its candidates (leading axes (row n, candidate C))."""

    table_dep: Deployment  # (U,) unique (GPU, model, precision, layout) deployments
    table_spec: Speculation  # (U,)
    table_disagg: jnp.ndarray  # (U,) 1.0 where disaggregated
    cand: jnp.ndarray  # (n, C) int index into the table (padding repeats the row's first candidate)
    valid: jnp.ndarray  # (n, C) bool: a real candidate
    wl: Workload  # (n,)
    family: jnp.ndarray  # (n,) int index into GPU_FAMILIES
    batch: jnp.ndarray  # (n, C) fixed concurrency per replica of each candidate (mode "fixed"; else 1)
    tpot_s: jnp.ndarray  # (n,) TPOT target (mode "slo"; else inf)
    measured: jnp.ndarray  # (n,) measured output tok/s per GPU (NaN if absent)


def _spec_choices(v) -> tuple[int, ...] | None:
    """Allowed MTP draft lengths of a ``mtp_or_spec`` cell: None = any (blank), (0,) = off."""
    if v is None or (isinstance(v, float) and np.isnan(v)) or str(v).strip() == "":
        return None
    s = str(v).strip()
    if s.lower() in ("none", "off", "no", "false", "0"):
        return (0,)
    ks = tuple(int(k) for k in re.findall(r"MTP-(\d+)", s, flags=re.IGNORECASE))
    if not ks:
        raise ConfigError(f"speculation '{s}' has no sourced acceptance in the catalog (only MTP-k with a model's "
                          f"mtp_accepted_tokens, or none)")
    return ks


def _row_layouts(hw, model, prec, rec: dict, mem_util: float) -> list[Layout]:
    """Candidate layouts of one row that agree with its given deployment columns."""
    num = rec.get("num_gpus")
    dec = rec.get("decode_gpus")
    dis = _flag(rec.get("pd_disaggregated"))
    if dec is not None and np.isfinite(dec):
        dis = True if dis is None else dis
        num = dec  # the decode pool's replica; the prefill pool is sized by its load
    gpus = int(num) if num is not None and np.isfinite(num) else None
    context = float(rec["isl"]) + float(rec["osl"])
    lays = candidate_layouts(hw, model, prec, mem_util, context, gpus=gpus)
    tp, ep = rec.get("tp"), rec.get("ep")
    dpa = _flag(rec.get("dp_attention"))
    spec = _spec_choices(rec.get("mtp_or_spec"))
    if spec is not None and spec != (0,) and gpus is not None:
        lays = with_draft_lengths(lays, model, spec)  # drafts the candidate set skips (e.g. MTP-2, MTP-5)
    if ep is not None and np.isfinite(ep) and model.num_experts > 0:
        e = int(ep)  # a given EP degree (e.g. TP8 attention with MoE TP4 x EP2) on every candidate shape
        if gpus is None or gpus % e == 0:  # (experts ep does not divide: redundant slots, params.expert_slots)
            lays = lays + [Layout(lay.gpus, lay.tp, e, lay.disaggregated, lay.spec_k) for lay in lays
                           if lay.gpus % e == 0]
    out = []
    for lay in dict.fromkeys(lays):
        if tp is not None and np.isfinite(tp):
            # TensorRT-LLM: --tp N with attention DP runs attention data-parallel over the N GPUs
            as_tp = lay.tp == int(tp) and lay.dp == 1
            as_dp = lay.tp == 1 and lay.gpus == int(tp) and lay.gpus > 1
            if not ((as_tp and dpa is not True) or (as_dp and dpa is not False)):
                continue
        elif dpa is not None and (lay.dp > 1) != dpa:
            continue
        if ep is not None and np.isfinite(ep) and lay.ep != int(ep) and not (model.num_experts == 0 and int(ep) == 1):
            continue
        if dis is not None and lay.disaggregated != dis:
            continue
        if spec is not None and lay.spec_k not in spec:
            continue
        out.append(lay)
    return out


def _mode_of(rec: dict) -> tuple[str, float, float]:
    """(mode, concurrency per deployment, TPOT target s) of a row."""
    conc, tpot, tps = rec.get("concurrency"), rec.get("tpot_ms"), rec.get("tokens_per_s_per_user")
    if conc is not None and np.isfinite(conc):
        return "fixed", float(conc), np.inf
    if tpot is not None and np.isfinite(tpot):
        return "slo", 1.0, float(tpot) / 1000.0
    if tps is not None and np.isfinite(tps):
        return "slo", 1.0, 1.0 / float(tps)
    return "max", 1.0, np.inf


class Grouped(NamedTuple):
    """Prepared rows: per mode a :class:`CaseBatch` and the positions of its rows in the frame."""

    batches: dict  # mode -> CaseBatch
    rows: dict  # mode -> (n,) int positions in the frame
    layouts: dict  # mode -> list (per row) of tuple[(precision, Layout), ...] candidates
    reasons: list  # one string per frame row ("" when predicted)


def build_cases(df: pd.DataFrame, eff: EfficiencyConfig | None = None, dtype=jnp.float64) -> Grouped:
    """Arrays for every row that can be predicted, grouped by operating mode.

    Rows sharing (GPU, model, precision, deployment columns, interactivity kind) share the catalog
    work; a blank precision tries every precision the GPU supports.
    """
    mem_util = (eff or catalog.load_efficiency()).mem_util
    reasons = [""] * len(df)
    meas_col = measured_column(df)
    measured = _num(df, meas_col) if meas_col else np.full(len(df), np.nan)
    cols = [c for c in ("model_key", "gpu_key", "precision_key", "num_gpus", "tp", "ep", "dp_attention",
                        "pd_disaggregated", "prefill_gpus", "decode_gpus", "mtp_or_spec", "isl", "osl",
                        "concurrency", "tpot_ms", "tokens_per_s_per_user") if c in df.columns]
    recs = df[cols].to_dict(orient="records")
    for r in recs:  # the max-throughput format has no such columns: aggregated, no speculation
        r.setdefault("mtp_or_spec", "none")
        r.setdefault("pd_disaggregated", False)
    for r in recs:
        for c in ("num_gpus", "tp", "ep", "prefill_gpus", "decode_gpus", "isl", "osl", "concurrency", "tpot_ms",
                  "tokens_per_s_per_user"):
            if c in r:
                try:
                    r[c] = float(r[c])
                except (TypeError, ValueError):
                    r[c] = float("nan")
    group_cache: dict = {}
    uniq: dict = {}  # (gpu, model, prec, layout) -> index into the unique tables
    u_dep, u_spec = [], []
    per_mode = {m: {"rows": [], "cands": [], "fam": [], "wl": [], "batch": [], "tpot": [], "meas": [], "lays": [],
                    "num": []} for m in MODES}
    for i, r in enumerate(recs):
        isl, osl = r.get("isl"), r.get("osl")
        if not (np.isfinite(isl) and np.isfinite(osl) and isl > 0 and osl > 0):
            reasons[i] = "isl and osl must be positive finite numbers (input / output tokens per request)"
            continue
        prec_cell = r.get("precision_key")
        prec_key = None if prec_cell is None or (isinstance(prec_cell, float) and np.isnan(prec_cell)) else str(prec_cell)
        key = (str(r["gpu_key"]), catalog.canonical_model(str(r["model_key"]), warn=False), prec_key,
               tuple(str(r.get(c)) for c in ("num_gpus", "tp", "ep", "dp_attention", "pd_disaggregated",
                                             "decode_gpus", "mtp_or_spec")), isl + osl)
        if key not in group_cache:
            try:
                hw = catalog.load_hardware(key[0])
                model = catalog.load_model(key[1])
                if isl + osl > model.max_context:
                    raise ConfigError(f"isl + osl = {isl + osl:g} exceeds model '{model.key}' max_context "
                                      f"{model.max_context}")
                if prec_key is not None:
                    precs = [catalog.load_precision(prec_key)]
                    check_precision_supported(hw, precs[0])
                else:
                    precs = [p for p in (catalog.load_precision(k) for k in catalog.available("precision"))
                             if getattr(hw.dense_tflops, p.compute) is not None]
                cands = []
                for p in precs:
                    for lay in _row_layouts(hw, model, p, r, mem_util):
                        uk = (hw.key, model.key, p.key, lay)
                        if uk not in uniq:
                            uniq[uk] = len(u_dep)
                            u_dep.append(build_deployment(hw, model, p, lay, None))
                            u_spec.append(build_mtp(model, lay.spec_k, None))
                        cands.append((uniq[uk], p.key, lay))
                if not cands:
                    what = f"{int(r['num_gpus'])}x " if np.isfinite(r.get("num_gpus", np.nan)) else ""
                    raise ConfigError(f"model '{model.key}' at {prec_key or 'any precision'} does not fit {what}"
                                      f"'{hw.key}' with isl+osl={isl + osl:g} tokens in any deployment matching the "
                                      f"given tp/ep/dp_attention/pd_disaggregated/mtp_or_spec columns")
                group_cache[key] = (GPU_FAMILIES.index(hw.family), cands)
            except ConfigError as e:
                group_cache[key] = str(e)
        g = group_cache[key]
        if isinstance(g, str):
            reasons[i] = g
            continue
        fam, cands = g
        mode, conc, tpot = _mode_of(r)
        d = per_mode[mode]
        d["rows"].append(i)
        d["cands"].append([c[0] for c in cands])
        d["lays"].append(tuple((c[1], c[2]) for c in cands))
        d["fam"].append(fam)
        d["wl"].append((isl, osl))
        num = r.get("num_gpus", np.nan)
        d["batch"].append(conc)  # per deployment; divided by its replicas below
        d["tpot"].append(tpot)
        d["meas"].append(measured[i])
        d["num"].append(num)
    if not u_dep:
        return Grouped({}, {}, {}, reasons)
    table_dep = stack_trees(u_dep, np)
    table_spec = stack_trees(u_spec, np)
    u_gpus = np.asarray([float(d.gpus) for d in u_dep])
    u_dis = np.asarray([float(lay.disaggregated) for (_, _, _, lay) in uniq])
    batches, rows, layouts = {}, {}, {}
    for mode, d in per_mode.items():
        if not d["rows"]:
            continue
        width = max(len(c) for c in d["cands"])
        idx = np.asarray([c + [c[0]] * (width - len(c)) for c in d["cands"]], int)
        valid = np.asarray([[j < len(c) for j in range(width)] for c in d["cands"]])
        conc = np.asarray(d["batch"], float)
        num = np.asarray(d["num"], float)
        # a deployment of num_gpus GPUs holds num_gpus / gpus replicas, which share the concurrency
        replicas = np.where(np.isfinite(num)[:, None], num[:, None] / u_gpus[idx], 1.0)
        batch = np.maximum(conc[:, None] / np.maximum(replicas, 1e-9), 1.0) if mode == "fixed" else np.ones(idx.shape)
        wl = np.asarray(d["wl"], float)
        batches[mode] = CaseBatch(
            table_dep=jax.tree.map(lambda x: jnp.asarray(x, dtype), table_dep),
            table_spec=jax.tree.map(lambda x: jnp.asarray(x, dtype), table_spec),
            table_disagg=jnp.asarray(u_dis, dtype), cand=jnp.asarray(idx), valid=jnp.asarray(valid), wl=Workload(jnp.asarray(wl[:, 0], dtype), jnp.asarray(wl[:, 1], dtype),
                                                  jnp.zeros(len(wl), dtype)),
            family=jnp.asarray(d["fam"]), batch=jnp.asarray(batch, dtype), tpot_s=jnp.asarray(d["tpot"], dtype),
            measured=jnp.asarray(d["meas"], dtype))
        rows[mode] = np.asarray(d["rows"], int)
        layouts[mode] = d["lays"]
    return Grouped(batches, rows, layouts, reasons)


def _predict_one(mode: str, dep, spec, dis, wl, eff, batch, tpot):
    """Output tok/s per GPU, TPOT (s), fits and meets-target of one candidate."""
    if mode == "max":
        p = max_throughput_point(dep, eff, wl, spec, dis)
        ok = p.fits
    elif mode == "fixed":
        p = operating_point(dep, eff, wl, batch, spec, dis)
        ok = p.fits
    else:
        p, ok = slo_point(dep, eff, wl, tpot, jnp.inf, spec, disaggregated=dis)
        ok = ok & p.fits
    return p.output_tok_s, p.tpot_s, ok


def predict(batch: CaseBatch, table: EfficiencyTable, mode: str):
    """Best candidate of every case (vmapped): output tok/s per GPU, candidate index, TPOT s, fits.

    Pure and jittable (``mode`` static); differentiable in ``table`` (through the chosen candidate).
    """

    def row(cand, valid, wl, fam, b, tpot):
        dep = jax.tree.map(lambda x: x[cand], batch.table_dep)
        spec = jax.tree.map(lambda x: x[cand], batch.table_spec)
        dis = batch.table_disagg[cand]
        eff = efficiency_at(table, fam)
        out, tp, ok = jax.vmap(lambda d, s, x, bb: _predict_one(mode, d, s, x, wl, eff, bb, tpot))(dep, spec, dis, b)
        ok = ok & valid
        score = jnp.where(ok, out, -1.0)
        c = jnp.argmax(score)
        return jnp.where(ok[c], out[c], 0.0), c, tp[c], ok[c]

    return jax.vmap(row)(batch.cand, batch.valid, batch.wl, batch.family, batch.batch, batch.tpot_s)


predict_jit = jax.jit(predict, static_argnames=("mode",))


def _chunks(batch: CaseBatch, size: int):
    """Fixed-size chunks of a batch's rows (the last padded by repeating its first row), with their true lengths."""
    n = int(batch.family.shape[0])
    per_row = ("cand", "valid", "wl", "family", "batch", "tpot_s", "measured")
    for start in range(0, n, size):
        stop = min(start + size, n)
        idx = np.arange(start, start + size)
        idx = np.where(idx < stop, idx, start)
        yield batch._replace(**{f: jax.tree.map(lambda x: x[idx], getattr(batch, f)) for f in per_row}), stop - start


def predict_grouped(g: Grouped, table: EfficiencyTable) -> dict:
    """Run :func:`predict` on every mode group in chunks; returns mode -> (out, cand, tpot, fits) NumPy arrays."""
    res = {}
    for mode, batch in g.batches.items():
        n = int(batch.family.shape[0])
        size = min(CHUNK_ROWS, max(n, 1))
        parts = []
        for chunk, m in _chunks(batch, size):
            parts.append(tuple(np.asarray(x)[:m] for x in predict_jit(chunk, table, mode=mode)))
        res[mode] = tuple(np.concatenate([p[i] for p in parts]) for i in range(4))
    return res


class LatencyBatch(NamedTuple):
    """Stacked arrays of online-serving latency measurements (leading axis = case)."""

    dep: Deployment
    wl: Workload
    family: jnp.ndarray  # (n,) int index into GPU_FAMILIES
    concurrency: jnp.ndarray  # (n,) mean sequences in flight, Little's law: rate · (TTFT + (osl−1)·ITL)
    measured_itl_s: jnp.ndarray  # (n,) mean inter-token latency, s


def build_latency_cases(df: pd.DataFrame, dtype=jnp.float64) -> LatencyBatch | None:
    """Arrays for latency rows (columns LATENCY_COLUMNS); rows that cannot be built are dropped."""
    missing = [c for c in LATENCY_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"latency cases lack column(s) {missing}; required: {list(LATENCY_COLUMNS)}")
    deps, wls, fams, conc, itl = [], [], [], [], []
    for rec in df.to_dict(orient="records"):
        try:
            hw = catalog.load_hardware(str(rec["gpu_key"]))
            model = catalog.load_model(catalog.canonical_model(str(rec["model_key"]), warn=False))
            dep = build_deployment(hw, model,
                                   catalog.load_precision(str(rec["precision_key"])), int(rec["tp"]), dtype)
        except ConfigError:
            continue
        deps.append(dep)
        wls.append(Workload(jnp.asarray(float(rec["isl"]), dtype), jnp.asarray(float(rec["osl"]), dtype),
                            jnp.asarray(0.0, dtype)))
        fams.append(GPU_FAMILIES.index(hw.family))
        w = (float(rec["mean_ttft_ms"]) + (float(rec["osl"]) - 1.0) * float(rec["mean_itl_ms"])) / 1000.0
        conc.append(max(float(rec["tput_req_s"]) * w, 1.0))
        itl.append(float(rec["mean_itl_ms"]) / 1000.0)
    if not deps:
        return None
    return LatencyBatch(stack_trees(deps), stack_trees(wls), jnp.asarray(fams), jnp.asarray(conc, dtype),
                        jnp.asarray(itl, dtype))


def predict_itl(batch: LatencyBatch, table: EfficiencyTable) -> jnp.ndarray:
    """Predicted time per output token at each case's concurrency, s (vmapped, differentiable)."""

    def one(dep, wl, fam, conc):
        return operating_point(dep, efficiency_at(table, fam), wl, conc).tpot_s

    return jax.vmap(one)(batch.dep, batch.wl, batch.family, batch.concurrency)


def error_summary(df: pd.DataFrame) -> dict[str, object]:
    """Median / mean absolute percentage error overall, by GPU and by model.

    ``df`` needs ``gpu_key``, ``model_key``, ``abs_pct_error`` (rows without a prediction are NaN).
    """
    ok = df.dropna(subset=["abs_pct_error"])
    by = lambda col: (ok.groupby(col)["abs_pct_error"].agg(["median", "mean", "count"])  # noqa: E731
                      .round(2).reset_index())
    return {"n_predicted": int(df["predicted_output_tok_s_per_gpu"].notna().sum()),
            "n_skipped": int((df["skipped_reason"] != "").sum()), "n_with_measurement": int(len(ok)),
            "median_ape_pct": float(ok["abs_pct_error"].median()) if len(ok) else float("nan"),
            "mean_ape_pct": float(ok["abs_pct_error"].mean()) if len(ok) else float("nan"),
            "by_gpu": by("gpu_key"), "by_model": by("model_key")}


def predict_frame(df: pd.DataFrame, eff: EfficiencyConfig) -> pd.DataFrame:
    """All input columns plus ``predicted_output_tok_s_per_gpu`` (and, for the max-throughput format,
    ``predicted_throughput_per_gpu_tok_s``), the deployment chosen (``chosen_precision``,
    ``chosen_deployment``), ``predicted_tpot_ms``, ``abs_pct_error`` and ``skipped_reason``."""
    require_float64("tokenmargin-estimate cases=")
    g = build_cases(df, eff)
    n = len(df)
    pred, tpot = np.full(n, np.nan), np.full(n, np.nan)
    chosen_prec, chosen_dep = [""] * n, [""] * n
    reasons = list(g.reasons)
    for mode, (out, cand, tp, fits) in predict_grouped(g, efficiency_table(eff)).items():
        for j, i in enumerate(g.rows[mode]):
            prec, lay = g.layouts[mode][j][int(cand[j])]
            if fits[j]:
                pred[i], tpot[i] = out[j], tp[j] * 1e3
                chosen_prec[i], chosen_dep[i] = prec, lay.label()
            elif mode == "slo":
                reasons[i] = "no candidate deployment meets the row's TPOT (tpot_ms / tokens_per_s_per_user)"
            else:
                r = df.iloc[i]
                reasons[i] = (f"model '{r['model_key']}' does not fit '{r['gpu_key']}' at "
                              f"{r['precision_key']} in any matching deployment with "
                              f"isl+osl={int(r['isl'] + r['osl'])} tokens")
    out = df.copy()
    out["predicted_output_tok_s_per_gpu"] = np.round(pred, 1)
    if "throughput_per_gpu_tok_s" in df.columns:
        out["predicted_throughput_per_gpu_tok_s"] = np.round(pred, 1)
    out["predicted_tpot_ms"] = np.round(tpot, 3)
    out["chosen_precision"] = chosen_prec
    out["chosen_deployment"] = chosen_dep
    col = measured_column(df)
    meas = _num(df, col) if col else np.full(n, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["abs_pct_error"] = np.round(100.0 * np.abs(pred - meas) / meas, 2)
    out["skipped_reason"] = reasons
    return out
