"""The price sheet: one row per product, as a provider's pricing page (``price_sheet.{csv,md,json}``).

Each row gives the product's model, tier and service terms, its three prices (USD per million
input, cached-input and output tokens), each against its reference (list) price and against the
cheapest competitor product its buyers consider, and its volume, revenue and buyers. Host-side
(NumPy / pandas), from a plan's :class:`~optimizer.objective.Breakdown`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from optimizer.problem import PRICE_BOUND_TOL, Labels, Problem

KINDS = ("input", "cached_input", "output")
PRICE_COLUMNS = [f"{k}_usd_per_mtok" for k in KINDS] + ["requests_per_day", "revenue_usd_per_day"]
"""Columns that must be finite for the sheet to be exported."""


def _r(x: float, n: int = 4) -> float:
    return round(float(x), n)


def _terms(labels: Labels, tier: str) -> tuple[str, float | None, float | None, bool]:
    """``(text, tpot ms, ttft ms, deferrable)`` of a tier's service terms."""
    for t, tpot, ttft, deferrable in labels.tier_terms:
        if t == tier:
            if deferrable:
                return "deferrable, served in spare capacity", None, None, True
            parts = [f"TPOT <= {tpot:g} ms" if math.isfinite(tpot) else "",
                     f"TTFT <= {ttft:g} ms" if math.isfinite(ttft) else ""]
            text = ", ".join(p for p in parts if p) or "each segment's SLO"
            return text, (tpot if math.isfinite(tpot) else None), (ttft if math.isfinite(ttft) else None), False
    return "", None, None, False


def product_hours(labels: Labels, r: int) -> str:
    """When product ``r``'s sheet is valid: "all day", an off-peak sheet's windows, or "outside"
    them for the all-day product it replaces there."""
    return (labels.product_hours[r] if labels.product_hours else "") or "all day"


def main_buyer(prob: Problem, labels: Labels, r: int) -> int | None:
    """The segment buying most of product ``r`` at reference (None without buyers or competitors)."""
    weight = np.asarray(prob.demand.ref_demand) * (np.asarray(labels.flow_product) == r)
    if not labels.competitors or weight.sum() <= 0:
        return None
    return int(np.unravel_index(np.argmax(weight), weight.shape)[0])


def cheapest_competitor(prob: Problem, labels: Labels, r: int) -> tuple[int, float] | None:
    """``(competitor index, its scenario price per request)`` of the cheapest competitor product that
    product ``r``'s main buyer (most reference requests) considers — among those selling the same
    model where there are any — at that buyer's token mix; None when it considers none."""
    s = main_buyer(prob, labels, r)
    if s is None:
        return None
    considered = np.nonzero(np.asarray(prob.demand.comp_mask)[s] > 0)[0]
    same = [c for c in considered if labels.competitor_model[c] == labels.models[labels.product_model[r]]]
    considered = same or considered  # the same model where a competitor sells it
    if not len(considered):
        return None
    tokens = np.asarray(prob.tokens)[s]
    per_req = [float(np.dot(tokens, competitor_prices(prob, labels, c))) for c in considered]
    i = int(np.argmin(per_req))
    return int(considered[i]), per_req[i]


def competitor_prices(prob: Problem, labels: Labels, c: int) -> np.ndarray:
    """(3,) USD/Mtok a competitor charges in the scenario (list × what-if ratios), recovered from
    the list sheet and the ratios the problem was assembled with."""
    return np.asarray(labels.competitor_sheet[c], float) * np.asarray(labels.competitor_ratios[c], float)


def price_sheet_table(prob: Problem, labels: Labels, b) -> pd.DataFrame:
    """One row per product: model, tier, terms, prices vs reference and vs the cheapest competitor."""
    sheet = np.asarray(b.sheet, float)
    ref = np.asarray(prob.sheet_ref, float)
    tie = np.asarray(prob.sheet_tie)
    flow = np.asarray(labels.flow_product)
    reqs = np.asarray(b.requests_per_day, float)
    rev = np.asarray(b.revenue, float)
    lo, hi = np.asarray(prob.log_mu_lo, float), np.asarray(prob.log_mu_hi, float)
    rows = []
    for r, key in enumerate(labels.products):
        text, tpot, ttft, deferrable = _terms(labels, labels.product_tier[r])
        buyers = [labels.segments[s] for s in range(len(labels.segments)) if (flow[s] == r).any()]
        row = {"product": key, "model": labels.models[labels.product_model[r]], "tier": labels.product_tier[r],
               "hours": product_hours(labels, r), "terms": text, "tpot_ms": tpot, "ttft_ms": ttft,
               "deferrable": deferrable,
               "kind": "contract" if labels.product_contract[r] >= 0 else "public",
               "buyers": ", ".join(buyers)}
        for t, kind in enumerate(KINDS):
            row[f"{kind}_usd_per_mtok"] = _r(sheet[r, t], 6)
        for t, kind in enumerate(KINDS):
            row[f"{kind}_vs_reference"] = _r(sheet[r, t] / ref[r, t], 4) if ref[r, t] > 0 else None
        cheap = cheapest_competitor(prob, labels, r)
        if cheap is None:
            row["cheapest_competitor"] = ""
            for kind in KINDS:
                row[f"{kind}_vs_competitor"] = None
        else:
            c, _ = cheap
            theirs = competitor_prices(prob, labels, c)
            row["cheapest_competitor"] = (f"{labels.competitor_provider[c]} {labels.competitor_model[c]} "
                                          f"({labels.competitor_date[c]})")
            for t, kind in enumerate(KINDS):
                row[f"{kind}_vs_competitor"] = _r(sheet[r, t] / theirs[t], 4) if theirs[t] > 0 else None
        lm = np.log(np.maximum(sheet[r], 1e-300) / np.maximum(ref[r], 1e-300))[np.unique(tie[r])]
        row["price_at_bound"] = ("floor" if (lm <= lo[r] + PRICE_BOUND_TOL).any() else
                                 "ceiling" if (lm >= hi[r] - PRICE_BOUND_TOL).any() else "")
        row["requests_per_day"] = _r(reqs[flow == r].sum(), 1)
        row["revenue_usd_per_day"] = _r(rev[flow == r].sum(), 2)
        row["reference_source"] = labels.product_source[r]
        rows.append(row)
    return pd.DataFrame(rows)


def price_sheet_markdown(table: pd.DataFrame, scenario: str) -> str:
    """The price sheet as a pricing page (public products first, then contracts)."""
    def usd(x) -> str:
        return f"${x:.4g}" if x is not None and not pd.isna(x) else "-"

    def vs(x) -> str:
        return f"{100 * (x - 1):+.0f} %" if x is not None and not pd.isna(x) else "-"

    out = [f"# Price sheet — {scenario}", "",
           "USD per million tokens. \"vs list\": against the reference (list) price of the product; "
           "\"vs competitor\": against the cheapest competitor product its main buyer considers.", ""]
    for kind, title in (("public", "Products"), ("contract", "Contracts (one segment each)")):
        part = table[table["kind"] == kind]
        if not len(part):
            continue
        out += [f"## {title}", "",
                "| Model | Tier | Hours | Service terms | Input | Cached input | Output | vs list (in / out) | "
                "Cheapest competitor | vs competitor (in / out) | Buyers |",
                "|---|---|---|---|---:|---:|---:|---|---|---|---|"]
        for _, r in part.iterrows():
            out.append(f"| {r['model']} | {r['tier']} | {r['hours']} | {r['terms']} | {usd(r['input_usd_per_mtok'])} | "
                       f"{usd(r['cached_input_usd_per_mtok'])} | {usd(r['output_usd_per_mtok'])} | "
                       f"{vs(r['input_vs_reference'])} / {vs(r['output_vs_reference'])} | "
                       f"{r['cheapest_competitor'] or '-'} | {vs(r['input_vs_competitor'])} / "
                       f"{vs(r['output_vs_competitor'])} | {r['buyers']} |")
        out.append("")
    bound = table[table["price_at_bound"] != ""]
    if len(bound):
        out += ["Prices at their search bound (the optimum may lie beyond it): "
                + ", ".join(f"{p} ({b})" for p, b in zip(bound["product"], bound["price_at_bound"])), ""]
    return "\n".join(out)
