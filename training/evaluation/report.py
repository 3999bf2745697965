"""The offline evaluation report: one self-contained HTML file.

The report is for people, so it shows rather than lists: every section is a figure
(rendered with matplotlib to PNG and embedded as a ``data:`` URI) with a small table
beside it. The file has inline CSS, no scripts and no external references, so it opens
offline and sends no requests.

Figures are drawn on :class:`matplotlib.figure.Figure` objects directly (never through
``pyplot``), which keeps rendering free of global state and of any GUI backend.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ...features.io import atomic_file

if TYPE_CHECKING:  # matplotlib is imported lazily, only when a report is drawn
    from matplotlib.figure import Figure

__all__ = ["ReportContent", "render_report", "render_html", "lorenz_curve"]

# one colour per policy, stable across figures so a reader can follow a policy around
_POLICY_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f")

_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 0 auto;
       max-width: 1100px; padding: 1.5em 2em 4em; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; margin-top: 2.2em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
p.lead { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.88em; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.6em; text-align: right; }
th { background: #f5f5f7; }
td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1.2em; font-size: 0.92em; }
dl.facts dt { color: #555; } dl.facts dd { margin: 0; font-family: ui-monospace, Menlo, monospace; }
ul.notes { color: #555; font-size: 0.9em; }
"""


@dataclass(frozen=True)
class ReportContent:
    """Everything the report shows; every section except the headline is optional.

    Parameters
    ----------
    title
        Page title.
    facts
        Short key/value facts shown at the top (model URI, window, request counts, ...).
    headline
        One row per policy (index = policy label), one column per metric.
    creator_exposure
        Policy label -> exposure of every eligible creator (zeros included), for the Lorenz
        curves. Usually relevance-only against balanced.
    tradeoff
        Quality/fairness points: columns ``policy``, ``kind`` (``"sweep"`` or
        ``"baseline"``), ``strength`` (NaN for baselines), ``ndcg_at_10``, ``gini``.
    merchants
        One row per merchant with ``trust_index`` and ``trust_<dimension>`` columns.
    feature_importance
        Columns ``feature`` and ``gain`` (and optionally ``split``).
    segments
        Columns ``segment_kind``, ``segment``, ``policy`` and metric columns
        (``exposure_share``, ``ndcg_at_10``, ...).
    counterfactual
        One row per policy (index = policy label) with ``expected_orders``,
        ``good_orders``, ``bad_order_rate`` and ``net_value``; present only when the
        simulator's ground truth is available.
    comparison
        Served policy against the plain model: one row per criterion with ``ratio``,
        ``target`` and ``met`` (shown under the counterfactual figure).
    frontier
        Pareto verdicts of the other methods' sweep points against the balancer's sweep
        (:func:`~trustfeed.training.evaluation.frontier.pareto_verdicts`).
    levers
        The operator levers at a few values each with what they cost and buy
        (:mod:`~trustfeed.training.evaluation.levers`).
    notes
        Free-text caveats listed at the end (e.g. lists skipped for having no positive label).
    links
        Companion pages shown under the facts: text -> relative address (e.g. the closed-loop
        rollout's ``rollout.html`` written beside the report).
    """

    title: str
    facts: Mapping[str, str]
    headline: pd.DataFrame
    creator_exposure: Mapping[str, np.ndarray] = field(default_factory=dict)
    tradeoff: pd.DataFrame | None = None
    merchants: pd.DataFrame | None = None
    feature_importance: pd.DataFrame | None = None
    segments: pd.DataFrame | None = None
    counterfactual: pd.DataFrame | None = None
    comparison: pd.DataFrame | None = None
    frontier: pd.DataFrame | None = None
    levers: pd.DataFrame | None = None
    notes: Sequence[str] = ()
    links: Mapping[str, str] = field(default_factory=dict)


def lorenz_curve(exposure: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lorenz curve of an exposure vector: (population share, cumulative exposure share).

    Both arrays start at 0 and end at 1; an all-zero vector gives the equality line.

    Examples
    --------
    >>> x, y = lorenz_curve(np.array([0.0, 0.0, 2.0]))
    >>> y.round(3).tolist()
    [0.0, 0.0, 0.0, 1.0]
    """
    values = np.sort(np.asarray(exposure, dtype=float))
    n = values.size
    population = np.linspace(0.0, 1.0, n + 1)
    total = values.sum()
    if n == 0 or total <= 0:
        return population, population.copy()
    cumulative = np.concatenate([[0.0], np.cumsum(values) / total])
    return population, cumulative


def render_report(content: ReportContent, path: str | os.PathLike[str]) -> Path:
    """Render ``content`` to a self-contained HTML file, written atomically.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> headline = pd.DataFrame({"ndcg_at_10": [0.41, 0.40]}, index=["relevance only", "balanced"])
    >>> out = render_report(ReportContent("demo", {"model": "runs:/x/model"}, headline),
    ...                     pathlib.Path(tempfile.mkdtemp()) / "report.html")
    >>> out.read_text().startswith("<!DOCTYPE html>")
    True
    """
    target = Path(path)
    document = render_html(content)
    with atomic_file(target) as tmp:
        tmp.write_text(document, encoding="utf-8")
    return target


def render_html(content: ReportContent) -> str:
    """The report as an HTML string (see :func:`render_report`)."""
    sections = [
        f"<h1>{_esc(content.title)}</h1>",
        '<p class="lead">Offline evaluation of the trust-aware ranker on held-out feed requests.</p>',
        _facts(content.facts),
        *_links(content.links),
        "<h2>Headline metrics</h2>",
        _table(content.headline, index=True),
    ]
    policies = list(content.headline.index.astype(str))
    if content.creator_exposure:
        sections += [
            "<h2>Creator exposure: Lorenz curves</h2>",
            _figure(
                _lorenz_png(content.creator_exposure, policies),
                "Cumulative share of exposure against the share of creators (sorted by exposure). "
                "The further a curve sags below the diagonal, the more unequal the exposure.",
            ),
        ]
    if content.tradeoff is not None and not content.tradeoff.empty:
        sections += [
            "<h2>Quality against fairness</h2>",
            _figure(
                _tradeoff_png(content.tradeoff, policies),
                "NDCG@10 (and, with the simulator's truth, expected orders) against the Gini of creator "
                "exposure for sweeps of the balancer's strength, of FA*IR's and DetConstSort's target long-tail "
                "share p and of the FairCo-style and P-MMF-style strengths, with the other baselines on the same "
                "axes. Up and to the left is better. Balancer strength 0 is its base order: the trust-aware "
                "ranking without the balancer (with the default diversity_k 0, no one-slot-per-creator rule).",
            ),
            _table(content.tradeoff, index=False),
        ]
    if content.frontier is not None and not content.frontier.empty:
        sections += [
            "<h3>Where the balancer Pareto-dominates</h3>",
            "<p>A point of another method is dominated when a point of the balancer's sweep has a Gini no higher "
            "and every quality axis no lower (one strictly better). For the others, <em>short_on</em> names the "
            "axes on which the balancer point nearest in Gini is worse, and <em>margin_&lt;axis&gt;</em> is the "
            "balancer's line (linear between its two sweep points around the point's Gini) minus the point: "
            "0 or more means the balancer does at least as well there.</p>",
            _table(content.frontier, index=False),
        ]
    if content.levers is not None and not content.levers.empty:
        sections += [
            "<h2>Operator levers: what each costs and buys</h2>",
            "<p>The held-out requests re-ranked with one lever changed from the served policy (the Gini target "
            "with the balancer's controller on). guaranteed_lift = the guaranteed merchants' share of exposure "
            "over their share of the shown candidates; shown_share = candidates left after the hard rules.</p>",
            _table(content.levers, index=False),
        ]
    if content.merchants is not None and not content.merchants.empty:
        sections += [
            "<h2>Trust across merchants</h2>",
            _figure(
                _trust_png(content.merchants),
                "Distribution of the trust index and of its six dimensions across merchants "
                "(higher = more trustworthy).",
            ),
            _table(_trust_summary(content.merchants), index=True),
        ]
    if content.feature_importance is not None and not content.feature_importance.empty:
        sections += [
            "<h2>Feature importance</h2>",
            _figure(_importance_png(content.feature_importance), "Total gain per feature in the LambdaMART model."),
        ]
    if content.segments is not None and not content.segments.empty:
        sections += [
            "<h2>Metrics by segment</h2>",
            _figure(
                _segments_png(content.segments, policies),
                "Share of exposure and NDCG@10 per segment: new vs established merchants, "
                "head vs tail creators, low vs high trust.",
            ),
            _table(content.segments, index=False),
        ]
    if content.counterfactual is not None and not content.counterfactual.empty:
        sections += [
            "<h2>Counterfactual outcomes (simulator ground truth)</h2>",
            _figure(
                _counterfactual_png(content.counterfactual, policies),
                "Expected outcomes had each policy served the held-out requests, computed from the "
                "simulator's hidden purchase and bad-order probabilities. Net value = good orders - "
                f"{content.counterfactual.attrs.get('bad_cost', 2.0):g} x bad orders (the policy's bad_cost).",
            ),
            _table(content.counterfactual, index=True),
        ]
    if content.comparison is not None and not content.comparison.empty:
        sections += [
            "<h3>Trust-aware + balancer against the plain LambdaMART</h3>",
            _table(content.comparison, index=True),
        ]
    if content.notes:
        sections += ["<h2>Notes</h2>", '<ul class="notes">' + "".join(f"<li>{_esc(n)}</li>" for n in content.notes) + "</ul>"]
    body = "\n".join(sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{_esc(content.title)}</title><style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


# ----------------------------------------------------------------------------- html pieces


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _facts(facts: Mapping[str, str]) -> str:
    rows = "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in facts.items())
    return f'<dl class="facts">{rows}</dl>'


def _links(links: Mapping[str, str]) -> list[str]:
    if not links:
        return []
    anchors = ", ".join(f'<a href="{_esc(address)}">{_esc(text)}</a>' for text, address in links.items())
    return [f'<p class="lead">See also: {anchors}.</p>']


def _table(frame: pd.DataFrame, index: bool) -> str:
    shown = frame.copy()
    for column in shown.columns:
        if pd.api.types.is_float_dtype(shown[column]):
            shown[column] = shown[column].map(_fmt)
    return shown.to_html(index=index, escape=True, border=0, na_rep="")


def _fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    magnitude = abs(value)
    if magnitude != 0 and (magnitude >= 1e4 or magnitude < 1e-3):
        return f"{value:.3g}"
    return f"{value:.4f}" if magnitude < 10 else f"{value:.1f}"


def _figure(png: bytes, caption: str) -> str:
    encoded = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img alt="{_esc(caption)}" src="data:image/png;base64,{encoded}">'
        f"<figcaption>{_esc(caption)}</figcaption></figure>"
    )


# ----------------------------------------------------------------------------- figures


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _colour(policies: Sequence[str], policy: str) -> str:
    if policy in policies:
        return _POLICY_COLOURS[list(policies).index(policy) % len(_POLICY_COLOURS)]
    return _POLICY_COLOURS[len(policies) % len(_POLICY_COLOURS)]


def _lorenz_png(exposures: Mapping[str, np.ndarray], policies: Sequence[str]) -> bytes:
    from ...ranker.metrics import gini

    figure = _new_figure(6.0, 5.0)
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], color="#999", linestyle="--", linewidth=1, label="perfect equality")
    for label, exposure in exposures.items():
        x, y = lorenz_curve(exposure)
        value = float(gini(np.asarray(exposure, dtype=float))) if len(exposure) else float("nan")
        axes.plot(x, y, linewidth=2, color=_colour(policies, label), label=f"{label} (Gini {value:.3f})")
    axes.set_xlabel("share of creators (sorted by exposure)")
    axes.set_ylabel("share of exposure")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.legend(loc="upper left", fontsize=9)
    axes.grid(alpha=0.3)
    return _png(figure)


def _tradeoff_png(points: pd.DataFrame, policies: Sequence[str]) -> bytes:
    orders = "expected_orders" in points.columns and bool(points["expected_orders"].notna().any())
    figure = _new_figure(13.0 if orders else 7.0, 5.0)
    panels = figure.subplots(1, 2) if orders else [figure.add_subplot()]
    for panel, metric, label in zip(panels, ("ndcg_at_10", "expected_orders"),
                                    ("NDCG@10 (higher = better)", "expected orders (higher = better)")):
        _tradeoff_panel(panel, points, policies, metric, label)
    return _png(figure)


def _tradeoff_panel(axes: Any, points: pd.DataFrame, policies: Sequence[str], metric: str, label: str) -> None:
    sweeps = points[points["kind"] == "sweep"]
    greys = ("#444444", "#8c6d31", "#637939", "#7b4173", "#e7969c", "#3182bd")
    for i, (name, sweep) in enumerate(sweeps.groupby("policy", sort=False)):
        sweep = sweep.sort_values("strength")
        axes.plot(sweep["gini"], sweep[metric], marker="o", color=greys[i % len(greys)], label=f"{name} (strength)")
        for gini_value, value, strength in zip(sweep["gini"], sweep[metric], sweep["strength"], strict=True):
            axes.annotate(f"{strength:g}", (gini_value, value), textcoords="offset points", xytext=(4, 4),
                          fontsize=8, color="#555")
    baselines = points[points["kind"] != "sweep"]
    markers = ("s", "D", "^", "v", "P", "X", "*")
    for i, (name, gini_value, value) in enumerate(zip(baselines["policy"], baselines["gini"], baselines[metric],
                                                      strict=True)):
        axes.scatter([float(gini_value)], [float(value)], marker=markers[i % len(markers)], s=70,
                     color=_colour(policies, str(name)), label=str(name), zorder=3)
    axes.set_xlabel("Gini of creator exposure (lower = fairer)")
    axes.set_ylabel(label)
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)


def _trust_columns(merchants: pd.DataFrame) -> list[str]:
    dims = [c for c in merchants.columns if c.startswith("trust_") and c != "trust_index"
            and pd.api.types.is_numeric_dtype(merchants[c])]
    return (["trust_index"] if "trust_index" in merchants.columns else []) + dims


def _trust_summary(merchants: pd.DataFrame) -> pd.DataFrame:
    columns = _trust_columns(merchants)
    values = merchants[columns].astype(float)
    return values.describe(percentiles=[0.1, 0.5, 0.9]).T[["mean", "10%", "50%", "90%"]]


def _trust_png(merchants: pd.DataFrame) -> bytes:
    columns = _trust_columns(merchants)
    figure = _new_figure(11.0, 4.2)
    left, right = figure.subplots(1, 2, width_ratios=[1, 2])
    if "trust_index" in merchants.columns:
        index_values = merchants["trust_index"].astype(float).dropna().to_numpy()
        left.hist(index_values, bins=np.linspace(0, 1, 26), color=_POLICY_COLOURS[0], alpha=0.85)
    left.set_xlabel("trust index")
    left.set_ylabel("merchants")
    left.set_title("trust index", fontsize=10)
    dims = [c for c in columns if c != "trust_index"]
    if dims:
        data = [merchants[c].astype(float).dropna().to_numpy() for c in dims]
        right.boxplot(data, orientation="horizontal", tick_labels=[c.removeprefix("trust_").replace("_", " ") for c in dims])
        right.set_xlim(0, 1)
        right.set_xlabel("dimension score")
        right.set_title("six dimensions", fontsize=10)
    for axes in (left, right):
        axes.grid(alpha=0.3)
    return _png(figure)


def _importance_png(importance: pd.DataFrame, top: int = 20) -> bytes:
    shown = importance.sort_values("gain", ascending=False).head(top).iloc[::-1]
    figure = _new_figure(7.5, max(2.5, 0.28 * len(shown) + 1.0))
    axes = figure.add_subplot()
    total = float(importance["gain"].sum()) or 1.0
    axes.barh(shown["feature"].astype(str), shown["gain"].astype(float) / total, color=_POLICY_COLOURS[0])
    axes.set_xlabel("share of total gain")
    axes.grid(alpha=0.3, axis="x")
    return _png(figure)


def _segments_png(segments: pd.DataFrame, policies: Sequence[str]) -> bytes:
    metrics = [m for m in ("exposure_share", "ndcg_at_10") if m in segments.columns]
    kinds = list(dict.fromkeys(segments["segment_kind"].astype(str)))
    figure = _new_figure(3.6 * max(1, len(kinds)), 3.2 * max(1, len(metrics)))
    grid = figure.subplots(max(1, len(metrics)), max(1, len(kinds)), squeeze=False)
    shown_policies = list(dict.fromkeys(segments["policy"].astype(str)))
    width = 0.8 / max(1, len(shown_policies))
    for row, metric in enumerate(metrics):
        for col, kind in enumerate(kinds):
            axes = grid[row][col]
            part = segments[segments["segment_kind"].astype(str) == kind]
            table = part.pivot_table(index="segment", columns="policy", values=metric, aggfunc="first", observed=True)
            positions = np.arange(len(table.index))
            for i, policy in enumerate(shown_policies):
                if policy in table.columns:
                    axes.bar(positions + i * width, table[policy].to_numpy(dtype=float), width,
                             color=_colour(policies, policy), label=policy)
            axes.set_xticks(positions + width * (len(shown_policies) - 1) / 2, [str(s) for s in table.index])
            axes.set_title(f"{kind}: {metric.replace('_', ' ')}", fontsize=9)
            axes.grid(alpha=0.3, axis="y")
    handles, labels = grid[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=min(4, max(1, len(labels))), fontsize=8)
    return _png(figure)


def _counterfactual_png(outcomes: pd.DataFrame, policies: Sequence[str]) -> bytes:
    metrics = [m for m in ("expected_orders", "good_orders", "bad_order_rate", "net_value") if m in outcomes.columns]
    figure = _new_figure(3.0 * max(1, len(metrics)), 3.6)
    grid = figure.subplots(1, max(1, len(metrics)), squeeze=False)[0]
    labels = [str(p) for p in outcomes.index]
    colours = [_colour(policies, label) for label in labels]
    for axes, metric in zip(grid, metrics):
        axes.bar(np.arange(len(labels)), outcomes[metric].to_numpy(dtype=float), color=colours)
        axes.set_xticks(np.arange(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        axes.set_title(metric.replace("_", " "), fontsize=10)
        axes.grid(alpha=0.3, axis="y")
    return _png(figure)
