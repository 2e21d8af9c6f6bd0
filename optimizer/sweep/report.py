"""The sweep's report: which axes move margin (table) and the tornado and heatmap plots."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

def axis_effects(result: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """How much each axis moves margin: mean margin at its low vs high end (others averaged).

    Grid axes use their lowest and highest values; sampled axes their bottom and top deciles.
    Only converged scenarios count. Sorted by the size of the swing.
    """
    ok = result[result["converged"]]
    rows = []
    for n in names:
        v = ok[n]
        if v.nunique() <= 12:
            lo_mask, hi_mask = v == v.min(), v == v.max()
        else:
            lo_mask, hi_mask = v <= v.quantile(0.1), v >= v.quantile(0.9)
        lo, hi = ok.loc[lo_mask, "margin_usd_per_day"].mean(), ok.loc[hi_mask, "margin_usd_per_day"].mean()
        rows.append({"axis": n, "low_value": float(v[lo_mask].mean()), "high_value": float(v[hi_mask].mean()),
                     "margin_at_low": round(float(lo), 2), "margin_at_high": round(float(hi), 2),
                     "swing_usd_per_day": round(float(abs(hi - lo)), 2)})
    return pd.DataFrame(rows).sort_values("swing_usd_per_day", ascending=False, ignore_index=True)


def sweep_plots(outdir: Path, result: pd.DataFrame, effects: pd.DataFrame, heat: list[str] | None) -> list[Path]:
    """Margin heatmap over two axes and a tornado chart of the axes' swings (PNG)."""
    from optimizer.figures import pyplot, save

    plt = pyplot()

    paths = []
    ok = result[result["converged"]]
    names = list(effects["axis"])
    if len(effects):
        fig, ax = plt.subplots(figsize=(7, 0.5 * len(effects) + 1.5))
        eff = effects.iloc[::-1]
        mid = float(ok["margin_usd_per_day"].mean())
        for i, r in enumerate(eff.itertuples()):
            ax.barh(i, r.margin_at_low - mid, left=mid, color="tab:red", alpha=0.7)
            ax.barh(i, r.margin_at_high - mid, left=mid, color="tab:green", alpha=0.7)
        ax.set_yticks(range(len(eff)), [f"{r.axis}\n{r.low_value:.3g} / {r.high_value:.3g}" for r in eff.itertuples()])
        ax.axvline(mid, color="black", lw=1)
        ax.set_xlabel("mean margin, USD/day (red: axis low, green: axis high)")
        ax.set_title("what moves margin")
        fig.tight_layout()
        paths.append(save(fig, outdir / "tornado.png"))
    pair = heat if heat else names[:2]
    if len(pair) == 2 and all(p in ok.columns for p in pair):
        df = ok[pair + ["margin_usd_per_day"]].copy()
        for p in pair:
            if df[p].nunique() > 12:
                df[p] = pd.qcut(df[p], 10, duplicates="drop").apply(lambda iv: round(iv.mid, 4)).astype(float)
        piv = df.pivot_table(index=pair[1], columns=pair[0], values="margin_usd_per_day", aggfunc="mean")
        fig, ax = plt.subplots(figsize=(7, 5))
        im = ax.imshow(piv.to_numpy() / 1e3, origin="lower", aspect="auto", cmap="viridis")
        ax.set_xticks(range(piv.shape[1]), [f"{x:.3g}" for x in piv.columns], rotation=45)
        ax.set_yticks(range(piv.shape[0]), [f"{y:.3g}" for y in piv.index])
        ax.set_xlabel(pair[0])
        ax.set_ylabel(pair[1])
        fig.colorbar(im, ax=ax, label="mean margin (k$/day)")
        ax.set_title("margin over two axes")
        fig.tight_layout()
        paths.append(save(fig, outdir / "heatmap.png"))
    return paths
