"""The run's figures drawn from plain data (NumPy arrays, pandas frames), and a helper process that
draws some of them while this one draws the others.

:mod:`optimizer.report` computes what each figure shows (it needs the problem and JAX); this module
only draws, and imports neither JAX nor the model, so a fresh interpreter can start it in a fraction
of a run's time. Drawing a figure is pure Python (matplotlib's Agg renderer holds the GIL), so a
thread cannot draw two at once; a second process can, on the second core of the machine.

:class:`Helper` is that process: started when a run starts (its imports overlap the solve), handed
figures once the plan is known, and waited for before the run's files are published. A helper that
fails, or is not there, costs nothing but time: every figure it did not draw is drawn here.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

DPI = 110
HELPER_TIMEOUT_S = 120.0
"""Seconds the run waits for the helper's figures before drawing them itself."""


class Figure(NamedTuple):
    """One figure to draw: its kind (a key of :data:`DRAW`), its data and the file to write."""

    kind: str
    data: dict
    path: Path


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed), titles at the top of their axes.

    ``axes.titley = 1.0`` places every title where matplotlib's automatic placement puts it on
    these figures (no axis has tick labels on top) without that placement's pass over the tight
    bounding boxes of every axis and its twins at each draw: about a quarter of the drawing time
    of the demand-and-margin figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["axes.titley"] = 1.0
    return plt


def demand_margin_vs_price(data: dict, plt):
    """Demand (left axis) and total margin (right axis) against each main product's price (its whole
    sheet moved; ``data["multiples"]`` of the chosen price), competitors' prices marked."""
    mults, panels = data["multiples"], data["panels"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for i, p in enumerate(panels):
        ax = axes[0, i]
        ax.plot(mults, np.asarray(p["requests"]) / 1e6, color="tab:blue")
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks([0.25, 0.5, 1.0, 2.0, 4.0], ["0.25", "0.5", "1", "2", "4"])
        ax.set_xlabel("price / chosen price")
        ax.set_ylabel("requests per day (millions)", color="tab:blue")
        ax2 = ax.twinx()
        ax2.plot(mults, np.asarray(p["margins"]) / 1e3, color="tab:green")
        ax2.set_ylabel("total margin (k$/day, continuous fleet)", color="tab:green")
        ax.axvline(1.0, color="black", ls="--", lw=1)
        for name, x in p["marks"]:
            if mults[0] <= x <= mults[-1]:
                ax.axvline(x, color="tab:red", ls=":", lw=1)
                ax.text(x, ax.get_ylim()[1], name, rotation=90, va="top", ha="right", fontsize=7, color="tab:red")
        ax.set_title(p["title"], fontsize=9)
    margins(fig, left=0.75, right=0.8, bottom=0.6, top=0.35, wspace=1.45)
    return fig


def cost_per_mtok(data: dict, plt):
    """GPU cost per million tokens of each pool (rows) at each segment's shape and SLO (bars).

    The bars of a segment are one polygon collection (pandas' ``barh`` makes a patch per bar, which
    costs about a third of the figure's drawing time), grouped as pandas groups them."""
    from matplotlib.collections import PolyCollection
    from matplotlib.patches import Patch

    piv = data["table"]
    vals = piv.to_numpy(float)  # (pools, segments); NaN where a segment does not use the pool
    rows, cols = vals.shape
    # the legend sits right of the bars (it covered some where matplotlib's "best" spot put it, and
    # finding that spot searched the whole figure at each draw): the figure widens by its width, in inches
    legend_w = 0.55 + 0.075 * max([len(str(c)) for c in piv.columns] + [len(str(piv.columns.name or ""))])
    fig, ax = plt.subplots(figsize=(10 + legend_w, max(3, 0.28 * rows)))
    shown = np.isfinite(vals) & (vals > 0)
    lo, hi = (vals[shown].min(), vals[shown].max()) if shown.any() else (1.0, 10.0)
    height, colors = 0.5 / max(cols, 1), plt.rcParams["axes.prop_cycle"].by_key()["color"]
    handles = []
    for i, name in enumerate(piv.columns):
        y = np.arange(rows) - 0.25 + height * (i + 0.5)
        base = lo / 10.0  # left of the axis: bars start at its edge, as on a log axis they must
        bars = [[(base, c - height / 2), (base, c + height / 2), (v, c + height / 2), (v, c - height / 2)]
                for c, v in zip(y[shown[:, i]], vals[shown[:, i], i])]
        ax.add_collection(PolyCollection(bars, facecolors=colors[i % len(colors)], edgecolors="none"))
        handles.append(Patch(color=colors[i % len(colors)], label=str(name)))
    ax.set_xscale("log")
    ax.set_xlim(lo / 1.5, hi * 1.2)
    ax.set_ylim(-0.5, rows - 0.5)
    ax.set_yticks(np.arange(rows), [str(p) for p in piv.index])
    ax.legend(handles=handles, title=piv.columns.name, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              borderaxespad=0.0)
    ax.set_xlabel("GPU cost per million tokens (USD, at the segment's SLO, 100 % utilisation)")
    margins(fig, left=0.25 + 0.085 * max(len(str(p)) for p in piv.index), right=0.2 + legend_w, bottom=0.6,
            top=0.2)
    return fig


def fleet(data: dict, plt):
    """GPUs per type, stacked by pool (model / precision)."""
    fleet = data["fleet"]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    if len(fleet):
        comp = fleet.assign(pool=fleet["model"] + "/" + fleet["precision"]).pivot_table(
            index="gpu", columns="pool", values="gpus", aggfunc="sum").fillna(0.0)
        comp.plot.bar(stacked=True, ax=ax)
    ax.set_ylabel("GPUs")
    ax.set_title("fleet composition")
    ax.set_xlabel("")
    ax.tick_params(axis="x", labelrotation=0)
    margins(fig, left=0.7, right=0.2, bottom=0.45, top=0.35)
    return fig


def fleet_hourly(data: dict, plt):
    """GPUs per period per GPU type, reserved (solid) vs on-demand (hatched), and utilisation."""
    hourly = data["hourly"]
    types = list(dict.fromkeys(hourly["gpu"]))
    fig, axes = plt.subplots(1, len(types), figsize=(5.2 * len(types), 3.6), squeeze=False)
    for i, g in enumerate(types):
        cols = ["reserved_gpus", "on_demand_gpus", "busy_gpus", "gpus"] + (
            ["idle_reserved_gpus"] if "idle_reserved_gpus" in hourly else [])
        d = hourly[hourly["gpu"] == g].groupby("start_hour")[cols].sum()
        ax = axes[0, i]
        x = d.index.to_numpy(float)
        width = float(np.diff(x).min()) if len(x) > 1 else 1.0
        ax.bar(x, d["reserved_gpus"], width=width * 0.9, align="edge", color="tab:blue", label="reserved")
        ax.bar(x, d["on_demand_gpus"], width=width * 0.9, align="edge", bottom=d["reserved_gpus"],
               color="tab:orange", hatch="//", label="on-demand")
        cap = data.get("on_demand_caps", {}).get(g)
        if cap is not None:  # the most the cloud lends on demand: reserved GPUs + the cap, per period
            held = d["reserved_gpus"] + (d["idle_reserved_gpus"] if "idle_reserved_gpus" in d else 0.0)
            top = held.to_numpy(float) + np.asarray(cap, float)[:len(x)]
            ax.step(np.append(x, x[-1] + width), np.append(top, top[-1]), where="post", color="tab:red", lw=1,
                    ls="--", label="reserved + on-demand cap")
        ax.set_xlabel("hour of the cycle")
        ax.set_ylabel("GPUs")
        ax.set_title(g, fontsize=9)
        ax2 = ax.twinx()
        util = np.where(d["gpus"] > 0, d["busy_gpus"] / d["gpus"].where(d["gpus"] > 0, 1.0), 0.0)
        ax2.plot(x + width / 2, 100 * util, color="black", lw=1, marker=".", label="utilisation")
        ax2.set_ylim(0, 100)
        ax2.set_ylabel("utilisation (%)")
        if i == 0 or cap is not None:
            ax.legend(loc="upper left", fontsize=7)
    margins(fig, left=0.75, right=0.75, bottom=0.6, top=0.35, wspace=1.2)
    return fig


DRAW = {"demand_margin_vs_price": demand_margin_vs_price, "cost_per_mtok": cost_per_mtok, "fleet": fleet,
        "fleet_hourly": fleet_hourly}
"""Each figure kind's drawing function ``f(data, plt) -> matplotlib Figure``."""


def margins(fig, left: float, right: float, bottom: float, top: float, wspace: float = 0.0) -> None:
    """Fixed margins in inches (what ``tight_layout`` would find, without its extra layout pass over
    every tick label, which costs as much as drawing the figure)."""
    w, h = fig.get_size_inches()
    n = max(len(fig.axes) and fig.axes[0].get_subplotspec().get_gridspec().ncols, 1)
    axes_w = (w - left - right - wspace * (n - 1)) / n
    fig.subplots_adjust(left=left / w, right=1 - right / w, bottom=bottom / h, top=1 - top / h,
                        wspace=wspace / max(axes_w, 1e-9))


def draw(figure: Figure) -> Path:
    """Draw ``figure`` and write its PNG atomically; returns its path."""
    return save(DRAW[figure.kind](figure.data, pyplot()), figure.path)


def save(fig, path: Path) -> Path:
    """Write a matplotlib figure as a PNG atomically and close it; returns ``path``."""
    from optimizer import io

    try:
        io.atomic_write(path, lambda p: fig.savefig(p, dpi=DPI, format="png"))
    finally:
        pyplot().close(fig)
    return path


EARLY_FIGURES = frozenset({"cost_per_mtok"})
"""The figures a run knows before it solves (they show the problem, not the plan): handed to the
helper as soon as the problem is built, so that it draws them while the solve runs."""

HELPER_FIGURES = frozenset({"demand_margin_vs_price"})
"""The figures a helper draws once the plan is known, beside the :data:`EARLY_FIGURES` it drew
during the solve, while the run draws the others (the default run: 0.8 s of drawing each side)."""


class Drawing:
    """``figures`` being drawn: those of the kinds ``handed`` go to ``helper`` (if any) at once;
    :meth:`finish` draws the others here, waits for the helper, and draws whatever it did not write.
    ``early``: the paths among ``figures`` handed to ``helper`` before (:meth:`Helper.draw`), not
    handed again."""

    def __init__(self, figures: list[Figure], helper: "Helper | None" = None, handed=HELPER_FIGURES,
                 early: frozenset[Path] = frozenset()):
        self.figures, self.handed = [], handed
        self.helper = helper if helper is not None and helper.running() else None
        self.theirs = set(early) if self.helper else set()
        self.add(figures, early)

    def add(self, figures: list[Figure], early: frozenset[Path] = frozenset()) -> None:
        """More figures: those of the kinds handed go to the helper at once, the others are drawn
        by :meth:`finish`."""
        self.figures = self.figures + list(figures)
        given = [f for f in figures if f.kind in self.handed and f.path not in early] if self.helper else []
        if given and self.helper.draw(given):
            self.theirs |= {f.path for f in given}

    def finish(self) -> list[Path]:
        """Draw this process's share, then the figures the helper did not write; the paths in
        ``figures``' order."""
        done = {draw(f) for f in self.figures if f.path not in self.theirs}
        if self.theirs:
            done |= set(self.helper.wait())
        done |= {draw(f) for f in self.figures if f.path not in done}
        return [f.path for f in self.figures if f.path in done]


def draw_all(figures: list[Figure], helper: "Helper | None" = None, handed=HELPER_FIGURES,
             early: frozenset[Path] = frozenset()) -> list[Path]:
    """Draw ``figures`` with ``helper``'s help, all at once (:class:`Drawing`); their paths."""
    return Drawing(figures, helper, handed, early).finish()


class Helper:
    """A second Python process that draws figures (see the module docstring).

    ``Helper()`` starts it (``python -m optimizer.figures``: it imports matplotlib and pandas, then
    waits); :meth:`draw` hands it figures and returns at once (it can be called again: the helper
    draws each batch as it comes); :meth:`wait` ends its input and returns the paths it wrote (an
    empty list if it failed: the caller draws those). :meth:`close` ends it, whatever its state; a
    helper never handed figures exits when its input closes.

    Its input is a sequence of frames, each an 8-byte big-endian length and a pickled list of
    :class:`Figure`; its output, once its input ends, the pickled list of the paths it wrote.
    """

    def __init__(self):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                                             os.environ.get("PYTHONPATH", "")])}
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "optimizer.figures"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        except OSError:
            self.proc = None

    def running(self) -> bool:
        """Whether the helper can still be handed figures (started, not exited, input open)."""
        return self.proc is not None and self.proc.poll() is None and self.proc.stdin is not None

    def draw(self, figures: list[Figure]) -> bool:
        """Hand ``figures`` to the helper; False if it is not running (the caller draws them)."""
        if not self.running():
            return False
        body = pickle.dumps(figures)
        try:
            self.proc.stdin.write(len(body).to_bytes(FRAME_HEADER, "big") + body)
            self.proc.stdin.flush()
        except OSError:
            return False
        return True

    def wait(self, timeout: float = HELPER_TIMEOUT_S) -> list[Path]:
        """End the helper's input and return the paths it wrote, once it has exited ([] if it failed
        or timed out)."""
        if self.proc is None:
            return []
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        self.proc.stdin = None  # closed: its end of the input (communicate() would flush it again)
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except (subprocess.TimeoutExpired, OSError, ValueError):
            self.close()
            return []
        if self.proc.returncode != 0:
            return []
        try:
            return [Path(p) for p in pickle.loads(out)]
        except Exception:  # noqa: BLE001  (a truncated reply: the caller draws every figure)
            return []

    def close(self) -> None:
        """End the helper (it exits on its own once its input is closed)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


NO_HELPER_FLAGS = frozenset({"-m", "--multirun", "-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info",
                             "-sc", "--shell-completion", "-p", "--package", "-r", "--resolve"})
"""Command-line flags of a run that draws no single run's figures (a multirun, help, config printing)."""

_EARLY: list[Helper] = []


def start_early(args: list[str]) -> None:
    """Start a helper as a console run starts, before Hydra composes its config and before JAX and
    pandas are imported, so that the helper's own imports use the core the main process leaves idle
    then. ``args``: the command line's arguments; nothing is started where they ask for no single
    run with plots (:data:`NO_HELPER_FLAGS`, a ``sweep=`` other than ``none``, ``output.plots=false``,
    ``hydra.mode=MULTIRUN``). :func:`helper_for` takes it; an unused helper exits with the run."""
    overrides = dict(a.lstrip("+~").partition("=")[::2] for a in args if "=" in a and not a.startswith("-"))
    if (NO_HELPER_FLAGS & set(args) or overrides.get("sweep", "none") != "none"
            or overrides.get("output.plots", "true").lower() == "false" or overrides.get("hydra.mode") == "MULTIRUN"):
        return
    _EARLY.append(Helper())


def helper_for(plots: bool) -> Helper | None:
    """The helper of a single run that draws ``plots``: the one :func:`start_early` started, or a new
    one (None without plots; an early helper is then closed)."""
    early = _EARLY.pop() if _EARLY else None
    if not plots:
        if early is not None:
            early.close()
        return None
    return early if early is not None else Helper()


FRAME_HEADER = 8
"""Bytes of a frame's length on the helper's input (:class:`Helper`)."""


def warm_up(plt) -> None:
    """Do, before the first figure arrives, what drawing it would otherwise do first: import pandas
    (the figures' data holds frames, and unpickling the first one imported it, on the run's critical
    path, after the figure had arrived) and render a small figure with the elements ours use (log
    axis, twin axis, title, legend), which loads the fonts and the renderer's caches. The helper is
    idle then: the run is still composing its configuration and building the problem
    (``benchmarks/single_run.py`` measures the effect)."""
    import io

    import pandas  # noqa: F401

    fig, ax = plt.subplots(figsize=(2.0, 1.5))
    ax.plot([1.0, 10.0], [0.0, 1.0], label="warm-up")
    ax.set_xscale("log")
    ax.set_title("warm-up")
    ax.set_xlabel("x")
    ax.legend(fontsize=7)
    ax.twinx().set_ylabel("y")
    fig.savefig(io.BytesIO(), dpi=DPI, format="png")
    plt.close(fig)


def serve() -> None:
    """The helper's main: import what drawing needs and warm it up (:func:`warm_up`), then draw each
    frame's figures as it arrives on stdin; when stdin ends, write the pickled list of the paths
    drawn to stdout (no frame: exit without output; a truncated frame: exit 1, so that the run draws
    them itself)."""
    warm_up(pyplot())
    stdin, paths, frames = sys.stdin.buffer, [], 0
    while header := stdin.read(FRAME_HEADER):
        body = stdin.read(int.from_bytes(header, "big")) if len(header) == FRAME_HEADER else b""
        if len(header) < FRAME_HEADER or len(body) < int.from_bytes(header, "big"):
            sys.exit(1)
        paths += [str(draw(f)) for f in pickle.loads(body)]
        frames += 1
    if frames:
        sys.stdout.buffer.write(pickle.dumps(paths))
        sys.stdout.buffer.flush()


if __name__ == "__main__":
    serve()
