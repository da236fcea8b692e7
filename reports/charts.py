"""Charts for the HTML reports: matplotlib figures rendered to inline SVG strings.

Drawing only -- every number comes from the result model. Figures are built with the
object-oriented API (``matplotlib.figure.Figure`` + the SVG canvas), never ``pyplot``: nothing
touches the process-wide backend or the pyplot figure registry, so a report rendered inside a
user's notebook or a pytest run leaves their matplotlib state alone, runs headless without a
display, and cannot leak figures (each one is cleared and dropped after rendering).

Safety and reproducibility:
- text stays text (``svg.fonttype = "none"``) and matplotlib escapes ``&``, ``<``, ``>`` in it;
  mathtext is off (``text.parse_math = False``) so a ``$`` in a layer name is just a dollar;
  control characters are removed from labels before drawing;
- ``svg.hashsalt`` is fixed and the metadata (date, creator) is dropped, so the same data give
  the same bytes;
- ids are prefixed per chart so several charts can live in one HTML page.

Each function returns an ``<svg>`` element as a string, or ``""`` when there is nothing to draw
(the page then says so in words).
"""
from __future__ import annotations

import io
import math
import re
import warnings
from typing import Any, Callable, Iterable, Optional, Sequence

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, MaxNLocator, NullFormatter
from matplotlib.transforms import blended_transform_factory

from audit.probes.results import GrowthPoint, SchemeResult
from audit.reports.common import finite, one_line, shorten, strip_controls

# Palette (Tailwind-like, readable on white and for the common colour-vision deficiencies).
INK = "#1f2937"
MUTED = "#6b7280"
GRID = "#e5e7eb"
RED = "#dc2626"
BLUE = "#2563eb"
GREEN = "#16a34a"
AMBER = "#d97706"
DEFAULT_COLOR = INK
RECOMMENDED_COLOR = GREEN
OTHER_COLORS = ("#2563eb", "#d97706", "#9333ea", "#0891b2", "#db2777", "#65a30d", "#ea580c",
                "#4f46e5", "#0d9488", "#a16207")

_RC = {
    "svg.fonttype": "none",
    "svg.hashsalt": "audit-report",
    "text.parse_math": False,
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Helvetica", "Arial"],
    "font.size": 9.5,
    "axes.edgecolor": "#d1d5db",
    "axes.labelcolor": INK,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.titlecolor": INK,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": GRID,
    "grid.linewidth": 0.7,
    "xtick.color": MUTED,
    "ytick.color": MUTED,
    "xtick.labelcolor": INK,
    "ytick.labelcolor": INK,
    "legend.frameon": False,
    "legend.fontsize": 8.5,
    "lines.linewidth": 1.6,
    "lines.markersize": 4,
    "path.simplify": True,
}
_METADATA = {"Date": None, "Creator": None, "Format": None, "Type": None}
_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
_ID = re.compile(r'\bid="([^"]+)"')
_REF = re.compile(r'(url\(#|xlink:href="#|href="#)([^")]+)')

WIDTH, HEIGHT = 7.2, 3.3  # inches; scaled by CSS to the container


# --------------------------------------------------------------------------- helpers


def label(text: object, limit: int = 48) -> str:
    """A user string made safe and short for a chart label."""
    return shorten(one_line(strip_controls(text)), limit)


def _left_shorten(text: str, limit: int) -> str:
    """``features.block3.conv2`` -> ``…block3.conv2``: the end of a dotted name says most."""
    return text if len(text) <= limit else "…" + text[-(limit - 1):]


def _positive(value: object) -> Optional[float]:
    number = finite(value)
    return number if number is not None and number > 0 else None


def _log_label(value: float, _pos: object = None) -> str:
    if value <= 0 or not math.isfinite(value):
        return ""
    exponent = math.log10(value)
    if abs(exponent - round(exponent)) < 1e-9:
        exponent = int(round(exponent))
        if exponent == 0:
            return "1"
        if exponent == 1:
            return "10"
        return "10" + str(exponent).translate(_SUPERSCRIPT)
    return f"{value:.2g}"


def _log_axis(ax: Axes, values: Sequence[float], zero_floor: Optional[float] = None) -> None:
    """Log y axis with readable decade labels (10⁻⁸), sensible limits for one value or one
    decade, and an optional ``0`` line at ``zero_floor`` for exact zeros."""
    ax.set_yscale("log")
    lo, hi = min(values), max(values)
    if zero_floor is not None:
        lo = min(lo, zero_floor)
    lo_dec, hi_dec = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    if hi_dec - lo_dec < 2:
        lo_dec, hi_dec = lo_dec - 1, hi_dec + 1
    ax.set_ylim(10.0 ** lo_dec / 1.5, 10.0 ** hi_dec * 1.5)
    span = hi_dec - lo_dec
    step = max(1, math.ceil(span / 7))
    ticks = [10.0 ** e for e in range(lo_dec, hi_dec + 1, step)]
    formatter = _log_label
    if zero_floor is not None:
        ticks = [t for t in ticks if t > zero_floor * 1.5] + [zero_floor]

        def formatter(value, pos=None, _floor=zero_floor):
            return "0" if abs(value - _floor) <= _floor * 1e-6 else _log_label(value)

    ax.yaxis.set_major_locator(FixedLocator(sorted(ticks)))
    ax.yaxis.set_major_formatter(FuncFormatter(formatter))
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs=(), numticks=1))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _integer_x(ax: Axes, xs: Sequence[float]) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=10))
    if xs:
        lo, hi = min(xs), max(xs)
        if lo == hi:
            ax.set_xlim(lo - 1, hi + 1)
        else:
            pad = (hi - lo) * 0.03
            ax.set_xlim(lo - pad, hi + pad)


def _no_data(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color=MUTED,
            fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def _svg(fig: Figure, name: str, title: str) -> str:
    """The figure as an inline ``<svg>`` element: no XML prolog, no fixed size (CSS scales
    it), ids prefixed with ``name``, an accessible title."""
    buffer = io.StringIO()
    try:
        fig.savefig(buffer, format="svg", metadata=_METADATA, facecolor="white")
    finally:
        fig.clear()
    text = buffer.getvalue()
    text = text[text.index("<svg"):]
    text = _ID.sub(lambda m: f'id="{name}-{m.group(1)}"', text)
    text = _REF.sub(lambda m: f"{m.group(1)}{name}-{m.group(2)}", text)
    head_end = text.index(">")
    head = text[:head_end]
    head = re.sub(r'\s(width|height)="[^"]*"', "", head, count=2)
    safe_title = (title.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
                  .replace('"', "&quot;"))
    head += f' class="chart" role="img" aria-label="{safe_title}"'
    return head + text[head_end:].rstrip() + "\n"


def _figure(height: float = HEIGHT, rows: int = 1, sharex: bool = False) -> tuple[Figure, list[Axes]]:
    """A figure of the common width, so every chart shows text at the same size."""
    fig = Figure(figsize=(WIDTH, height), layout="constrained")
    # layout="constrained" made the engine, whose set() takes the pads (the stub types the base)
    fig.get_layout_engine().set(w_pad=0.06, h_pad=0.06)  # type: ignore[union-attr, call-arg]
    axes = fig.subplots(rows, 1, sharex=sharex, squeeze=False)[:, 0]
    return fig, list(axes)


def _render(build: Callable[[], Optional[Figure]], name: str, title: str) -> str:
    """Run ``build()`` -> figure (or ``None`` when there is nothing to draw) under the chart
    style, and return its SVG."""
    # _RC's keys are rcParams names; the stub wants them typed as its literal keys
    with matplotlib.rc_context(_RC), warnings.catch_warnings():  # type: ignore[arg-type]

        warnings.simplefilter("ignore")  # missing glyphs, tight layout on tiny data
        fig = build()
        if fig is None:
            return ""
        return _svg(fig, name, title)


# --------------------------------------------------------------------------- determinism


def _growth_values(points: list[GrowthPoint], key: str, floor: Optional[float]) -> list[float]:
    """One series of the growth chart: exact zeros on the ``floor`` line, gaps as NaN (there is
    no ``floor`` only when no value is zero)."""
    ys = []
    for p in points:
        value = finite(getattr(p, key))
        low = float("nan") if floor is None else floor
        ys.append(float("nan") if value is None else (value if value > 0 else low))
    return ys


def _mark_divergence(ax: Axes, step: int) -> None:
    ax.axvline(step, color=AMBER, linewidth=1.2, linestyle="--", zorder=2)
    ax.text(step, 1.0, f" first divergence (step {step})",
            transform=blended_transform_factory(ax.transData, ax.transAxes),
            color=AMBER, fontsize=8.5, va="bottom", ha="left")


def growth_chart(growth: Iterable[GrowthPoint], divergence_step: Optional[int] = None) -> str:
    """How far apart the runs' parameters are after each step: max |diff| and relative L2
    distance, log scale. Exact zeros sit on a ``0`` line at the bottom; the first divergent
    step is marked. When every value is zero the chart is a single flat ``0`` line."""
    points = sorted((p for p in growth if p is not None and finite(p.step) is not None),
                    key=lambda p: p.step)
    if not points:
        return ""
    series = (("max |diff| of any parameter", "max_abs_diff", RED, "o"),
              ("relative L2 distance of all parameters", "rel_l2", BLUE, "s"))
    positives = [v for p in points for _, key, _, _ in series
                 if (v := _positive(getattr(p, key))) is not None]
    has_zero = any(finite(getattr(p, key)) == 0 for p in points for _, key, _, _ in series)
    if not positives and not has_zero:
        return ""

    def build():
        fig, (ax,) = _figure(height=HEIGHT if positives else 2.0)
        if positives:
            floor = 10.0 ** (math.floor(math.log10(min(positives))) - 1) if has_zero else None
            _log_axis(ax, positives, zero_floor=floor)
        else:
            floor = 0.0
            ax.set_ylim(-1, 1)
            ax.set_yticks([0])
            ax.set_yticklabels(["0"])
        for text, key, color, marker in series:
            ys = _growth_values(points, key, floor)
            if all(math.isnan(y) for y in ys):
                continue
            ax.plot([p.step for p in points], ys, color=color, marker=marker, label=text,
                    markersize=3.5, zorder=3)
        if floor is not None:
            ax.axhline(floor, color=MUTED, linewidth=0.8, linestyle=(0, (2, 2)), zorder=1)
        if divergence_step is not None:
            _mark_divergence(ax, divergence_step)
        if not positives:
            ax.text(0.5, 0.72, "the runs' parameters are identical after every step",
                    transform=ax.transAxes, ha="center", color=GREEN, fontsize=10)
        _integer_x(ax, [p.step for p in points])
        ax.set_xlabel("training step")
        ax.set_ylabel("difference between runs" if positives else "difference")
        fig.legend(loc="outside lower center", ncols=2)
        return fig

    return _render(build, "growth", "How the difference between the runs grows per step")


# --------------------------------------------------------------------------- init


def _scheme_style(scheme: SchemeResult, index: int, recommended: Optional[str]) -> dict[str, Any]:
    if scheme.name == "default":
        return {"color": DEFAULT_COLOR, "linewidth": 2.8, "zorder": 5, "alpha": 1.0,
                "marker": "o", "markersize": 4}
    if scheme.name == recommended:
        return {"color": RECOMMENDED_COLOR, "linewidth": 2.4, "zorder": 4, "alpha": 1.0,
                "marker": "o", "markersize": 3.5}
    return {"color": OTHER_COLORS[index % len(OTHER_COLORS)], "linewidth": 1.2, "zorder": 3,
            "alpha": 0.75, "marker": None, "markersize": 0}


def _scheme_label(scheme: SchemeResult, recommended: Optional[str], extra: str = "") -> str:
    text = label(scheme.name, 28)
    if scheme.name == "default":
        text += " (the model's own)"
    elif scheme.name == recommended:
        text += " (recommended)"
    return text + extra


def _ordered(schemes: Sequence[SchemeResult], recommended: Optional[str]) -> list[SchemeResult]:
    """Draw order: others first, then the recommended, then default on top; the legend keeps
    default and recommended first."""
    return sorted(schemes, key=lambda s: (s.name == "default", s.name == recommended))


def _legend(fig: Figure, ax: Axes) -> None:
    """The schemes' legend right of the plot: the model's own init first, then the
    recommended scheme, then the others as measured."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    def rank(text: str) -> int:
        return 0 if "(the model's own)" in text else 1 if "(recommended)" in text else 2
    pairs = sorted(zip(handles, labels), key=lambda hl: rank(hl[1]))
    fig.legend([h for h, _ in pairs], [l for _, l in pairs], loc="outside right upper")


def _depth_chart(schemes: Sequence[SchemeResult], recommended: Optional[str], field_name: str,
                 ylabel: str, name: str, title: str) -> str:
    schemes = [s for s in schemes if s is not None]
    if not schemes or not any(s.layers for s in schemes):
        return ""

    def build():
        fig, (ax,) = _figure()
        values: list[float] = []
        depths: list[float] = []
        order = {s.name: i for i, s in enumerate(schemes)}
        for scheme in _ordered(schemes, recommended):
            layers = sorted(scheme.layers, key=lambda l: l.depth)
            xs = [l.depth for l in layers]
            ys = [_positive(getattr(l, field_name)) for l in layers]
            bad = [l.depth for l in layers
                   if getattr(l, field_name) is not None
                   and finite(getattr(l, field_name)) is None]
            style = _scheme_style(scheme, order[scheme.name], recommended)
            depths.extend(xs)
            if any(y is not None for y in ys):
                values.extend(y for y in ys if y is not None)
                ax.plot(xs, [float("nan") if y is None else y for y in ys],
                        label=_scheme_label(scheme, recommended,
                                            " - non-finite" if bad else ""), **style)
            elif bad:
                ax.plot([], [], label=_scheme_label(scheme, recommended, " - non-finite"),
                        **style)
            if bad:
                ax.plot(bad, [1.0] * len(bad), linestyle="none", marker="x", markersize=7,
                        color=style["color"], clip_on=False, zorder=6,
                        transform=blended_transform_factory(ax.transData, ax.transAxes))
        if not values:
            _no_data(ax, "no finite values were measured")
            return fig
        _log_axis(ax, values)
        _integer_x(ax, depths)
        ax.set_xlabel("layer depth (execution order)")
        ax.set_ylabel(ylabel)
        _legend(fig, ax)
        return fig

    return _render(build, name, title)


def grad_norm_chart(schemes: Sequence[SchemeResult], recommended: Optional[str] = None) -> str:
    """Gradient norm per layer against depth, one line per scheme, log scale; the model's own
    init is the thick dark line, the recommended scheme the thick green one."""
    return _depth_chart(schemes, recommended, "grad_norm", "weight-gradient norm",
                        "gradnorm", "Gradient norm against depth, per scheme")


def act_std_chart(schemes: Sequence[SchemeResult], recommended: Optional[str] = None) -> str:
    """Standard deviation of each layer's output against depth, per scheme, log scale."""
    return _depth_chart(schemes, recommended, "act_std", "output activation std",
                        "actstd", "Activation standard deviation against depth, per scheme")


def _layer_names(schemes: Sequence[SchemeResult]) -> list[str]:
    """Every scheme's layer names, in execution order, once each."""
    names: list[str] = []
    for scheme in schemes:
        for layer in sorted(scheme.layers, key=lambda l: l.depth):
            if layer.name not in names:
                names.append(layer.name)
    return names


def _fraction_bars(ax: Axes, schemes: Sequence[SchemeResult], names: list[str], field_name: str,
                   what: str, recommended: Optional[str]) -> None:
    """One panel: a bar per layer and scheme of ``field_name`` (a fraction, 0 to 1)."""
    width = 0.8 / len(schemes)
    order = {s.name: i for i, s in enumerate(schemes)}
    anything = False
    for n, scheme in enumerate(schemes):
        by_name = {l.name: l for l in scheme.layers}
        xs, ys = [], []
        for i, layer_name in enumerate(names):
            layer = by_name.get(layer_name)
            value = finite(getattr(layer, field_name)) if layer is not None else None
            if value is not None:
                xs.append(i + (n - (len(schemes) - 1) / 2) * width)
                ys.append(min(max(value, 0.0), 1.0))
        anything = anything or any(y > 0 for y in ys)
        style = _scheme_style(scheme, order[scheme.name], recommended)
        ax.bar(xs, ys, width=width * 0.92, color=style["color"],
               alpha=0.9 if scheme.name in ("default", recommended) else 0.7,
               label=_scheme_label(scheme, recommended), zorder=3)
    ax.set_ylim(0, 1.0)
    ax.yaxis.set_major_locator(FixedLocator([0, 0.25, 0.5, 0.75, 1.0]))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v * 100:.0f}%"))
    ax.set_ylabel(what)
    ax.grid(axis="x", visible=False)
    if not anything:
        ax.text(0.5, 0.6, f"no {what} in any layer", transform=ax.transAxes,
                ha="center", va="center", color=MUTED, fontsize=9.5)


def _layer_axis(axes: list[Axes], names: list[str], many: bool) -> None:
    """The shared x axis: layer names, or every few layer numbers when there are many."""
    axes[0].set_xlim(-0.6, len(names) - 0.4)
    if many:
        step = max(1, math.ceil(len(names) / 20))
        axes[-1].xaxis.set_major_locator(FixedLocator(list(range(0, len(names), step))))
        axes[-1].set_xlabel("layer (execution order)")
    else:
        axes[-1].set_xticks(range(len(names)))
        axes[-1].set_xticklabels([_left_shorten(label(n, 200), 22) for n in names],
                                 rotation=40, ha="right", rotation_mode="anchor",
                                 fontsize=8)


def dead_saturated_chart(schemes: Sequence[SchemeResult],
                         recommended: Optional[str] = None) -> str:
    """Fraction of dead (ReLU) and saturated (tanh/sigmoid) units per layer, as grouped bars
    for the given schemes (the model's own init and the recommended one). A panel is left out
    when no layer measured that quantity (e.g. no tanh/sigmoid at all)."""
    schemes = [s for s in schemes if s is not None and s.layers]
    panels = [(field_name, what) for field_name, what in
              (("dead_fraction", "dead units"), ("saturated_fraction", "saturated units"))
              if any(finite(getattr(l, field_name)) is not None
                     for s in schemes for l in s.layers)]
    if not schemes or not panels:
        return ""

    def build():
        names = _layer_names(schemes)
        many = len(names) > 24
        fig, axes = _figure(height=2.3 * len(panels) + (0.5 if many else 1.0), rows=len(panels),
                            sharex=True)
        for ax, (field_name, what) in zip(axes, panels):
            _fraction_bars(ax, schemes, names, field_name, what, recommended)
        _layer_axis(axes, names, many)
        _legend(fig, axes[0])
        return fig

    return _render(build, "deadsat", "Dead and saturated units per layer")


def _loss_range(steady: list[Any]) -> tuple[Any, ...]:
    """``(bottom, top, log scale?)`` of the loss chart, from the losses that stayed finite."""
    lo, hi = min(steady), max(steady)
    span = (hi - lo) or max(abs(hi), 1.0) * 0.1
    use_log = lo > 0 and hi / lo > 100
    top = hi * 1.6 if use_log else hi + span * 0.15
    bottom = lo / 1.6 if use_log else lo - span * 0.15
    return bottom, top, use_log


def _loss_curve(ax: Axes, scheme: SchemeResult, ys: list[Any], style: dict[str, Any], limits: tuple[Any, ...],
                recommended: Optional[str]) -> None:
    """One scheme's losses (None: not finite); the last finite point before a blow-up is
    crossed, and the legend says when the curve is non-finite or off scale."""
    bottom, top = limits
    bad = any(y is None for y in ys)
    off = any(y is not None and (y > top or y < bottom) for y in ys)
    notes = [note for note, on in (("non-finite", bad), ("off scale", off)) if on]
    extra = f" - {', '.join(notes)}" if notes else ""
    ax.plot(list(range(len(ys))), [float("nan") if y is None else y for y in ys],
            label=_scheme_label(scheme, recommended, extra), **style)
    if bad:
        last = max((i for i, y in enumerate(ys) if y is not None), default=None)
        if last is not None and bottom <= ys[last] <= top:
            ax.plot([last], [ys[last]], marker="x", markersize=8, color=style["color"],
                    linestyle="none", zorder=6)


def loss_chart(schemes: Sequence[SchemeResult], recommended: Optional[str] = None) -> str:
    """Training loss per step for each scheme. Non-finite losses break the line and the last
    finite point before them is marked with a cross; the y range follows the schemes that
    stayed finite, so one blow-up does not flatten the others (it runs off the top, and its
    legend entry says so)."""
    schemes = [s for s in schemes if s is not None]
    if not any(s.loss for s in schemes):
        return ""

    def build():
        fig, (ax,) = _figure()
        curves = []
        for scheme in _ordered(schemes, recommended):
            ys = [finite(v) for v in scheme.loss]
            if ys:
                curves.append((scheme, ys))
        every = [y for _, ys in curves for y in ys if y is not None]
        if not every:
            _no_data(ax, "every loss was non-finite")
            return fig
        steady = [y for _, ys in curves if all(y is not None for y in ys) for y in ys if y is not None] or every
        bottom, top, use_log = _loss_range(steady)
        order = {s.name: i for i, s in enumerate(schemes)}
        steps: list[int] = []
        for scheme, ys in curves:
            steps.extend(range(len(ys)))
            style = _scheme_style(scheme, order[scheme.name], recommended)
            if style["marker"] is None and len(ys) <= 12:
                style = {**style, "marker": "o", "markersize": 2.5}
            _loss_curve(ax, scheme, ys, style, (bottom, top), recommended)
        if use_log:
            _log_axis(ax, steady)
        ax.set_ylim(bottom, top)
        _integer_x(ax, steps)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss")
        _legend(fig, ax)
        return fig

    return _render(build, "loss", "Training loss per step, per scheme")


# --------------------------------------------------------------------------- variance, compare


def _jitter(count: int) -> list[Any]:
    """Fixed vertical offsets for ``count`` dots in one row (the same every time)."""
    return [((i * 0.618034) % 1.0 - 0.5) * 0.36 for i in range(count)]


def strip_chart(groups: Sequence[tuple[Any, ...]], metric: str, name: str, title: str) -> str:
    """One row per group (a source or a variant): its quartile box and median, and every seed
    as a dot. ``groups`` is ``[(label, [values...]), ...]``, drawn top to bottom."""
    rows = [(label, [v for v in (finite(x) for x in values) if v is not None])
            for label, values in groups]
    if not any(values for _, values in rows):
        return ""

    def build():
        fig, (ax,) = _figure(height=0.55 * len(rows) + 1.0)
        for i, (_, values) in enumerate(rows):
            y = len(rows) - 1 - i
            if len(values) > 1:
                ax.boxplot([values], positions=[y], orientation="horizontal", widths=0.5,
                           showfliers=False, whis=(0, 100), patch_artist=True,
                           boxprops={"facecolor": "#eff6ff", "edgecolor": BLUE},
                           medianprops={"color": BLUE, "linewidth": 1.6},
                           whiskerprops={"color": MUTED}, capprops={"color": MUTED})
            ax.scatter(values, [y + d for d in _jitter(len(values))], s=16, color=INK,
                       zorder=5, linewidths=0)
        ax.set_yticks(range(len(rows)), [label(l, 24) for l, _ in reversed(rows)])
        ax.set_ylim(-0.6, len(rows) - 0.4)
        ax.grid(axis="y", visible=False)
        ax.set_xlabel(label(metric, 40) + " (each dot one seed)")
        return fig

    return _render(build, name, title)


def delta_chart(deltas: Sequence[float], ci: Sequence[Any], metric: str) -> str:
    """The paired differences (candidate - baseline), each seed a dot, their mean and its
    confidence interval as a bar, and zero marked: a bar clear of zero is a real change."""
    values = [v for v in (finite(x) for x in deltas) if v is not None]
    if not values:
        return ""
    lo, hi = finite(ci[0]) if ci else None, finite(ci[1]) if ci else None

    def build():
        fig, (ax,) = _figure(height=1.7)
        ax.axvline(0.0, color=RED, linestyle="--", linewidth=1, zorder=1)
        ax.scatter(values, [0.35 + d * 0.5 for d in _jitter(len(values))], s=16, color=INK,
                   zorder=5, linewidths=0, label="one seed")
        mean = sum(values) / len(values)
        if lo is not None and hi is not None:
            ax.plot([lo, hi], [-0.2, -0.2], color=BLUE, linewidth=5, solid_capstyle="butt",
                    label="CI of the mean")
        ax.plot([mean], [-0.2], marker="D", color=INK, markersize=6, linestyle="none",
                label="mean", zorder=6)
        ax.set_yticks([])
        ax.set_ylim(-0.6, 0.75)
        ax.set_xlabel(f"candidate - baseline, {label(metric, 40)}")
        _legend(fig, ax)
        return fig

    return _render(build, "delta", "Paired differences and the CI of their mean")

# --------------------------------------------------------------------------- diff


def _rel_diffs(a: Sequence[Any], b: Sequence[Any]) -> list[Optional[float]]:
    out: list[Optional[float]] = []
    for x, y in zip(a, b):
        x, y = finite(x), finite(y)
        if x is None or y is None:
            out.append(None)
        else:
            out.append(0.0 if x == y else abs(x - y) / max(abs(x), abs(y)))
    return out


def loss_pair_chart(a: Sequence[Any], b: Sequence[Any], first_step: Optional[int] = None) -> str:
    """Two versions' loss curves overlaid (side a dashed under side b), and below them the
    relative difference per step (log scale, exact zeros on a ``0`` line); the step where the
    sides first part is marked."""
    if not a and not b:
        return ""
    rel = _rel_diffs(a, b)
    positives = [r for r in rel if r]

    def build():
        fig, (top, bottom) = _figure(height=HEIGHT * 1.5, rows=2, sharex=True)
        for ys, text, color, style in ((a, "a (before)", MUTED, (0, (4, 2))),
                                       (b, "b (after)", BLUE, "-")):
            values = [float("nan") if (v := finite(y)) is None else v for y in ys]
            top.plot(range(len(values)), values, color=color, linestyle=style, label=text,
                     marker="o", markersize=2.5, zorder=3)
        top.set_ylabel("training loss")
        floor = 10.0 ** (math.floor(math.log10(min(positives))) - 1) if positives else None
        if positives:
            assert floor is not None  # set from the positives
            _log_axis(bottom, positives, zero_floor=floor)
            bottom.plot(range(len(rel)), [float("nan") if r is None else (r or floor) for r in rel],
                        color=RED, marker="o", markersize=3, zorder=3, label="relative difference")
            bottom.axhline(floor, color=MUTED, linewidth=0.8, linestyle=(0, (2, 2)), zorder=1)
        else:
            bottom.text(0.5, 0.5, "the two loss curves are identical at every step",
                        transform=bottom.transAxes, ha="center", va="center", color=GREEN)
            bottom.set_yticks([])
        bottom.set_ylabel("|a - b| / max(|a|, |b|)")
        if first_step is not None:
            for ax in (top, bottom):
                ax.axvline(first_step, color=AMBER, linewidth=1.2, linestyle="--", zorder=2)
            top.text(first_step, 1.0, f" first difference (step {first_step})",
                     transform=blended_transform_factory(top.transData, top.transAxes),
                     color=AMBER, fontsize=8.5, va="bottom", ha="left")
        _integer_x(bottom, list(range(max(len(a), len(b)))))
        bottom.set_xlabel("optimizer step")
        fig.legend(loc="outside lower center", ncols=3)
        return fig

    return _render(build, "losspair", "The two sides' loss curves and their relative difference")
