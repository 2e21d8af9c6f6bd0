"""Readable outputs: the Markdown report, the console summary and the plots (PNG)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from optimizer import figures as figs
from optimizer import io
from optimizer.io import markdown_table
from optimizer.economics import usd_per_gpu_second


def console_summary(summary: dict, plan: pd.DataFrame | None) -> str:
    """A short table for the terminal."""
    lines = [f"scenario: {summary['scenario']}    status: {summary['status']}"]
    if summary.get("violated_constraints"):
        lines.append("violated: " + "; ".join(summary["violated_constraints"]))
    if summary.get("error"):
        lines.append(f"error: {summary['error']}")
    t = summary.get("totals", {})
    if t:
        lines.append(f"margin ${t['margin_usd_per_day']:,.0f}/day = revenue ${t['revenue_usd_per_day']:,.0f} "
                     f"- GPU cost ${t['gpu_cost_usd_per_day']:,.0f}  ({t['margin_pct']:.1f} %)   "
                     f"GPUs: {summary.get('gpus_by_type', {})}")
    if plan is not None and len(plan):
        cols = ["segment", "model", "input_usd_per_mtok", "output_usd_per_mtok", "price_vs_reference",
                "precision_mix", "served_quality", "gpus", "margin_pct"]
        lines.append(plan[cols].to_markdown(index=False, floatfmt=".3f"))
    for note in summary.get("prices_at_bound", []):
        lines.append(f"warning: price at its search bound, the optimum may lie beyond it: {note}")
    for note in summary.get("loss_making", []):
        lines.append(f"note: loses money: {note}")
    return "\n".join(lines)


def markdown_report(summary: dict, plan: pd.DataFrame, fleet: pd.DataFrame, segments: pd.DataFrame,
                    reserved: pd.DataFrame | None = None) -> str:
    """The `plan.md` report a pricing or finance colleague reads."""
    t = summary["totals"]
    s = summary["solver"]
    out = [f"# Pricing plan — {summary['scenario']}", "",
           f"{summary.get('description', '')}", "",
           f"**Margin ${t['margin_usd_per_day']:,.0f}/day** ({t['margin_pct']:.1f} % of revenue): revenue "
           f"${t['revenue_usd_per_day']:,.0f}/day, GPU cost ${t['gpu_cost_usd_per_day']:,.0f}/day on "
           f"{t['gpus']:,.0f} GPUs ({', '.join(f'{k} {v:,.0f}' for k, v in summary['gpus_by_type'].items())}).", "",
           *[line for n in summary.get("prices_at_bound", [])
             for line in (f"> **Warning:** price at its search bound (the optimum may lie beyond it): {n}", "")],
           *[line for n in summary.get("loss_making", []) for line in (
               f"> **Note:** loses money (GPU cost attributed the peak-load way): {n}."
               + (" A shared price sheet may keep it for the other buyers' sake; a product of its own (a contract: "
                  "a product in `demand.products` open to it alone) would price it apart." if ", shared with " in n else ""),
               "")],
           *(["## Capacity to reserve", "",
              f"GPUs paid around the clock (reserved), against the peak and mean GPUs run over "
              f"{summary['periods']['count']} periods of {summary['periods']['hours_each']:g} h; the rest "
              f"is on-demand, paid per hour used.", "",
              markdown_table(reserved.astype(object).where(reserved.notna(), "no cap")), ""]
             if reserved is not None and len(reserved) else []),
           "## Prices, mix and margin per segment and model", "",
           markdown_table(plan.drop(columns=["gpus_by_type"])), "",
           "## Per segment (USD/day)", "", segments.to_markdown(index=False, floatfmt=",.2f"), "",
           "## Fleet", "", markdown_table(fleet), "",
           "## How this was solved", "",
           f"- Relaxed solve (continuous fleet): {s['relaxed']['status']}, margin "
           f"${s['relaxed']['margin_usd_per_day']:,.2f}/day, {_solver_line(s['relaxed'], summary)}, "
           f"{s['relaxed']['wall_s']:.1f} s.",
           ]
    if "integer" in s:
        loss = summary.get("integrality_loss_usd_per_day")
        if s["integer"].get("method") == "rounded":  # a load over several periods: whole replicas in every period
            rounds = s["integer"].get("tightened", 0)
            how = ("every pool rounded up to whole replicas in each period at the relaxed prices, mix and routing"
                   + (f" (the relaxation re-solved {rounds} time(s) within the GPU caps and budgets less what "
                      "rounding added, so the whole fleet keeps them)" if rounds else ""))
        else:
            how = "prices / mix / routing re-solved"
        out.append(f"- Integer fleet (whole replicas), {how}: {s['integer']['status']}, "
                   f"margin ${s['integer']['margin_usd_per_day']:,.2f}/day; margin lost to integrality "
                   f"${loss:,.2f}/day ({summary.get('integrality_loss_pct', 0):.3f} %)"
                   + (" — negative: the relaxed solve is within solver tolerance of the integer one" if loss < 0 else "")
                   + ".")
    viol, grad = summary["violation"], summary.get("grad_norm")
    has_grad = grad is not None and np.isfinite(grad)  # the augmented Lagrangian's; the dual has none
    out += [f"- Largest constraint violation (normalised): {'none' if viol <= 0 else f'{viol:.2g}'}"
            + (f"; gradient norm {grad:.2g}" if has_grad else "") + ".", "",
            "Prices are per million tokens; cached input is billed at the segment's cached-price ratio. "
            "GPU cost is attributed to segments by their share of each pool's GPU-time.", ""]
    return "\n".join(out)


PRICE_MULTIPLES = np.exp(np.linspace(np.log(0.25), np.log(4.0), 41))
"""Price / chosen price at which the demand-and-margin plot evaluates each product."""
MAX_PLOTTED_PRODUCTS = 6
"""The demand-and-margin plot shows the products of largest revenue, at most this many."""


def price_response_program(prob, dec):
    """``(program, log price shifts (R·41, R))`` of the demand-and-margin plot: each product's price
    sheet moved alone through :data:`PRICE_MULTIPLES` (compiled once per machine)."""
    from optimizer import aot
    from optimizer.objective import price_response_jit

    R = np.shape(prob.sheet_ref)[0]
    n = len(PRICE_MULTIPLES)
    deltas = np.zeros((R, n, R))
    for r in range(R):
        deltas[r, :, r] = np.log(PRICE_MULTIPLES)
    deltas = deltas.reshape(R * n, R)
    return aot.exported("price_response", price_response_jit, (dec, prob, deltas), quick=True), deltas


def competitor_marks(prob, labels, price: np.ndarray, r: int) -> list[tuple[str, float]]:
    """``(label, competitor's scenario price / ours)`` per request at the main buyer's token mix, for
    the competitors that product ``r``'s main buyer considers."""
    from optimizer.price_sheet import competitor_prices, main_buyer

    s = main_buyer(prob, labels, r)
    if s is None:
        return []
    j = labels.product_model[r]
    tokens = np.asarray(prob.tokens)[s]
    cmask = np.asarray(prob.demand.comp_mask)[s]
    return [(f"{labels.competitor_provider[c]} {labels.competitor_model[c]}",
             float(np.dot(tokens, competitor_prices(prob, labels, c)) / price[s, j]))
            for c in range(len(labels.competitors)) if cmask[c] > 0 and price[s, j] > 0]


def prepare(prob, labels) -> None:
    """Compile the plots' program and import matplotlib ahead, in the background while the solve
    runs (``optimize(also_compile=...)``; XLA releases the GIL, so the import costs no wall time)."""
    import matplotlib

    from optimizer.decision import reference_decision

    price_response_program(prob, reference_decision(prob))
    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401


def _solver_line(stage: dict, summary: dict) -> str:
    """How a stage was solved, e.g. ``dual solver, 1000 steps, certified gap 0.05 %``."""
    if stage.get("method") == "dual":
        gap = stage.get("gap")
        line = f"dual solver, {stage['iterations']} steps"
        if gap is None:
            return line
        line += f", certified gap {100 * gap:.3f} %"
        if summary.get("shared_price_sheets"):  # convergence is then stationarity with the sheets found
            line += (" to the bound with per-segment prices, which includes what one price sheet per product "
                     "gives up")
        return line
    return f"augmented Lagrangian, {stage['iterations']} Adam steps x {summary['solver_settings']['starts']} starts"


def start_plots(folder: Path, result, helper=None, early: list | None = None) -> figs.Drawing:
    """The run's plots, to be written in ``folder``, started as soon as the plan is solved: the
    demand and margin vs each product's price (chosen price marked) goes to ``helper`` (an
    :class:`optimizer.figures.Helper`) at once, beside the :func:`early_figures` ``early`` (GPU cost
    per Mtok per pool) it was handed during the solve, while the run builds its tables and writes
    its files; :meth:`~optimizer.figures.Drawing.add` then takes the fleet figures
    (:func:`fleet_figures`) and :func:`finish_plots` draws the rest."""
    early = early or []
    return figs.Drawing(plan_figures(folder, result) + (early or early_figures(folder, result.prob, result.labels)),
                        helper, early=frozenset(f.path for f in early))


def finish_plots(drawing: figs.Drawing, outdir: Path) -> list[Path]:
    """Draw what is left of ``drawing`` and move every figure into ``outdir``; the new paths."""
    return [Path(shutil.move(p, outdir / p.name)) for p in drawing.finish()]


def early_figures(folder: Path, prob, labels) -> list:
    """The figures that show the problem rather than the plan (:data:`optimizer.figures.EARLY_FIGURES`),
    to be written in ``folder``: 2. the GPU cost per million tokens of each pool at each segment's
    shape (interactive at its SLO)."""
    S = np.shape(prob.gpu_s_per_request)[0]
    rows = []
    gsr = np.asarray(prob.gpu_s_per_request)
    price_h = np.asarray(prob.usd_per_gpu_hour)
    for s in range(S):
        tokens = labels.isl[s] + labels.osl[s]
        for (j, k, g), v in np.ndenumerate(gsr[s]):
            if v > 0:
                rows.append((f"{labels.gpus[g]}/{labels.models[j]}/{labels.precisions[k]}", labels.segments[s],
                             usd_per_gpu_second(v * price_h[g]) / tokens * 1e6))
    df = pd.DataFrame(rows, columns=["pool", "segment", "usd_per_mtok"])
    return [figs.Figure("cost_per_mtok", {"table": df.pivot_table(index="pool", columns="segment", values="usd_per_mtok")},
                        folder / "cost_per_mtok.png")]


def plan_figures(outdir: Path, result) -> list:
    """The figure of the plan's prices: 1. demand and margin vs each main product's price (its whole
    sheet; other prices held), on the relaxed cost model."""
    prob, labels = result.prob, result.labels
    dec = result.final.decision
    S, J = np.asarray(prob.demand.offer_mask).shape
    R = len(labels.products)
    mults = PRICE_MULTIPLES
    program, deltas = price_response_program(prob, dec)
    reqs_all, margins_all = (np.asarray(x) for x in program(dec, prob, deltas))
    reqs_all, margins_all = reqs_all.reshape(R, len(mults), S, J), margins_all.reshape(R, len(mults))
    b = result.final_breakdown
    flow = np.asarray(labels.flow_product)
    revenue = np.asarray(b.revenue)
    shown = sorted(range(R), key=lambda r: -revenue[flow == r].sum())[:MAX_PLOTTED_PRODUCTS]
    price = np.asarray(b.price_per_request)
    panels = [{"requests": (reqs_all[r] * (flow == r)).sum((-1, -2)), "margins": margins_all[r],
               "marks": competitor_marks(prob, labels, price, r), "title": labels.products[r]} for r in shown]
    return [figs.Figure("demand_margin_vs_price", {"multiples": np.asarray(mults), "panels": panels},
                        outdir / "demand_margin_vs_price.png")]


def fleet_figures(outdir: Path, result, fleet: pd.DataFrame, hourly: pd.DataFrame | None = None) -> list:
    """The fleet's figures: 3. its composition; 4. the fleet over the day (several periods only)."""
    prob, labels = result.prob, result.labels
    out = [figs.Figure("fleet", {"fleet": fleet[["gpu", "model", "precision", "gpus"]].copy()}, outdir / "fleet.png")]
    if hourly is not None and len(hourly) and hourly["period"].nunique() > 1:
        caps = {}
        if int(np.shape(prob.on_demand_cap)[-1]):  # each capped type's on-demand cap per period, drawn over the bars
            cap = np.asarray(prob.on_demand_cap, float)
            caps = {g: cap[i].tolist() for i, g in enumerate(labels.gpus) if (cap[i] < 1e29).any()}
        out.append(figs.Figure("fleet_hourly", {"hourly": hourly.copy(), "on_demand_caps": caps},
                               outdir / "fleet_hourly.png"))
    return out

