"""The closed-loop rollout's outputs: ``rollout.json``, the ``rollout.html`` page, the headline.

:func:`evaluate_rollout` is what ``trustfeed rollout`` runs: the rollout engine
(:func:`~trustfeed.training.evaluation.rollout.run_rollout`), then both files written
atomically, then both logged to the model's MLflow run when it has one.

The page is for an analyst deciding whether trust weighting pays: it shows, per policy,
trajectories over the rollout's days with a band across seeds (the 95% t-interval of the
mean), the gain in cumulative net value over the plain LambdaMART at the end of each week
(what trust weighting costs early and returns later), and a summary table with confidence
intervals next to the one-shot numbers of the static evaluation of the same model. Like the
static report it is one self-contained file: figures are PNG ``data:`` URIs, no scripts, no
external references.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ...features.io import atomic_file
from ...features.progress import NullProgress, Progress
from ._models import EVALUATION_DIR
from .report import _CSS, _colour, _esc, _facts, _figure, _new_figure, _png, _table

__all__ = [
    "ROLLOUT_HTML",
    "ROLLOUT_JSON",
    "RolloutOutput",
    "evaluate_rollout",
    "render_rollout_html",
    "rollout_headline",
    "static_numbers_of_model",
    "write_rollout",
]

ROLLOUT_JSON = "rollout.json"
ROLLOUT_HTML = "rollout.html"

# the comparison arm of every "against plain" number, and the upper bound
PLAIN = "plain"
ORACLE = "oracle"

# rollout policy -> its key in the static evaluation's metrics.json (where the names differ)
_STATIC_KEY = {"trust_aware_balanced": "served", "popularity": "logging"}

# trajectories drawn on the page: (metric, axis label, cumulative over days?)
_TRAJECTORIES = (
    ("net_value", "cumulative net value", True),
    ("active_buyers", "active buyers per day", False),
    ("active_creators_tail", "active long-tail creators per day", False),
    ("gini", "Gini of creator exposure per day", False),
)

# summary table: (metric, column label)
_SUMMARY = (
    ("net_value", "net value"),
    ("expected_net_value", "expected net value"),
    ("orders", "orders"),
    ("bad_order_rate", "bad-order rate"),
    ("buyer_retention", "buyer retention"),
    ("visits_per_day_end", "visits a day at the end"),
    ("active_creators_tail", "active tail creators"),
    ("gini", "Gini"),
    ("oracle_gain_share", "share of oracle's gain"),
)

# the headline's comparison with the plain LambdaMART: (metric, words, higher is better)
_HEADLINE = (
    ("net_value", "net value", True),
    ("expected_net_value", "expected net value of the same slates", True),
    ("orders", "orders", True),
    ("bad_order_rate", "bad-order rate", False),
    ("buyer_retention", "buyer retention", True),
    ("visits_per_day_end", "buyers' visits a day at the end", True),
)


@dataclass(frozen=True)
class RolloutOutput:
    """Where :func:`evaluate_rollout` wrote, what it measured, and the MLflow run it logged to."""

    json_path: Path
    html_path: Path
    document: dict[str, Any]
    run_id: str | None = None


# ----------------------------------------------------------------------------- the job


def evaluate_rollout(
    model_uri: str,
    events: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    days: int = 28,
    seeds: int = 3,
    policies: Sequence[str] | None = None,
    tracking_uri: str | None = None,
    static: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
    **engine: Any,
) -> RolloutOutput:
    """Run the closed-loop rollout and write ``rollout.json`` and ``rollout.html`` in ``out_dir``.

    Parameters
    ----------
    model_uri
        The trained model (bundle directory, MLflow model directory, ``runs:/...``,
        ``models:/name@alias``).
    events
        A simulated dataset (``trustfeed simulate`` or the demo's ``events/``); the rollout
        continues the platform after its end.
    out_dir
        Output directory (created).
    days, seeds, policies
        Length of every trajectory, number of seeds, policy names (default: all registered).
    tracking_uri
        MLflow tracking URI for ``runs:/`` and ``models:/`` URIs and for logging.
    static
        The static evaluation's ``metrics.json`` document to show beside the rollout
        (default: the one the training run recorded for this model, when it can be found).
    progress
        Receives the engine's progress lines.
    **engine
        Passed on to the engine (``bad_cost``, ``dynamics``, ``rebuild_every_days``).

    Returns
    -------
    RolloutOutput
        When the model belongs to an MLflow run, both files are also logged to that run
        under ``rollout/``.

    Raises
    ------
    ConfigError
        Unknown policy, ``days`` or ``seeds`` below 1.
    ModelIntegrityError, RegistryError
        The model URI does not resolve.

    Examples
    --------
    >>> output = evaluate_rollout("models:/feed-ranker@champion", "events/", "out/", days=28)  # doctest: +SKIP
    >>> output.html_path.name  # doctest: +SKIP
    'rollout.html'
    """
    from ..registry import quiet_mlflow, resolve_tracking_uri, run_id_of_model_uri
    from .rollout import run_rollout

    progress = progress or NullProgress()
    uri = resolve_tracking_uri(tracking_uri)
    result = run_rollout(str(model_uri), Path(events), days=days, seeds=seeds, policies=policies, tracking_uri=uri,
                         progress=progress, **engine)
    document = result.to_json()
    with quiet_mlflow():
        run_id = run_id_of_model_uri(str(model_uri), uri)
        if static is None:
            static = static_numbers_of_model(str(model_uri), uri, run_id)
    json_path, html_path = write_rollout(document, out_dir, static=static)
    progress(f"rollout: wrote {json_path} and {html_path}")
    if run_id is not None:
        progress(f"rollout: logging both files to MLflow run {run_id}")
        _log_to_run(run_id, uri, json_path, html_path)
    return RolloutOutput(json_path, html_path, document, run_id)


def write_rollout(
    document: Mapping[str, Any], out_dir: str | os.PathLike[str], static: Mapping[str, Any] | None = None
) -> tuple[Path, Path]:
    """Write ``rollout.json`` and ``rollout.html`` (each atomically) and return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / ROLLOUT_JSON, out / ROLLOUT_HTML
    # both rendered before either is written: a failure leaves neither file
    text = json.dumps(document, indent=2, sort_keys=True, allow_nan=False) + "\n"
    page = render_rollout_html(document, static)
    with atomic_file(json_path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    with atomic_file(html_path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return json_path, html_path


def static_numbers_of_model(model_uri: str, tracking_uri: str | None = None, run_id: str | None = None) -> dict[str, Any] | None:
    """The static evaluation the training job recorded for this model (``None`` if not found).

    Looked for beside the bundle (a training job's local output: ``<run>/evaluation/``) and
    in the model's MLflow run (artifact ``evaluation/metrics.json``).
    """
    from mlflow.exceptions import MlflowException

    from ..registry import client_for, quiet_mlflow, resolve_tracking_uri

    # the static numbers only decorate the page: not finding them is never an error
    metrics_name = f"{EVALUATION_DIR}/metrics.json"
    local = Path(model_uri)
    if local.is_dir():
        for folder in (local, local.parent):  # a bundle directory sits in its run's folder
            candidate = folder / metrics_name
            if candidate.is_file():
                return _read_json(candidate)
    if run_id is None:
        return None
    with tempfile.TemporaryDirectory() as tmp, quiet_mlflow():
        try:
            path = client_for(resolve_tracking_uri(tracking_uri)).download_artifacts(run_id, metrics_name, tmp)
        except (MlflowException, OSError):
            return None
        return _read_json(Path(path))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _log_to_run(run_id: str, tracking_uri: str, json_path: Path, html_path: Path) -> None:
    from mlflow.exceptions import MlflowException

    from ..registry import TrackingUnavailableError, client_for, quiet_mlflow

    try:
        with quiet_mlflow():
            client = client_for(tracking_uri)
            client.log_artifact(run_id, str(json_path), "rollout")
            client.log_artifact(run_id, str(html_path), "rollout")
    except (MlflowException, OSError) as error:
        raise TrackingUnavailableError(
            f"MLflow tracking at {tracking_uri} failed while logging the rollout to run {run_id}: "
            f"{' '.join(str(error).split())[:240]}; the files are at {json_path.parent}"
        ) from error


# ----------------------------------------------------------------------------- numbers


def _t_band(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and 95% t-interval across seeds (rows); the interval is the mean itself for one seed."""
    from scipy import stats

    values = np.asarray(values, dtype=float)
    n = values.shape[axis]
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(values, axis=axis)
        if n < 2:
            return mean, mean, mean
        half = stats.t.ppf(0.975, n - 1) * np.nanstd(values, axis=axis, ddof=1) / math.sqrt(n)
    return mean, mean - half, mean + half


def _trajectories(document: Mapping[str, Any], metric: str, cumulative: bool) -> dict[str, np.ndarray]:
    """Policy -> array (seeds x days) of a daily metric (summed over days when ``cumulative``)."""
    daily = pd.DataFrame(document["daily"])
    out: dict[str, np.ndarray] = {}
    if daily.empty or metric not in daily.columns:
        return out
    for policy in document["policies"]:
        rows = daily.loc[daily["policy"] == policy]
        table = rows.pivot(index="seed", columns="day", values=metric).sort_index().astype(float)
        values = table.to_numpy()
        out[policy] = np.nancumsum(values, axis=1) if cumulative else values
    return out


def gain_over_plain_by_week(document: Mapping[str, Any]) -> pd.DataFrame | None:
    """Cumulative net value minus plain's (same seed, same day) at the end of each week.

    Rows: policies; columns ``day 7``, ``day 14``, ... and the last day; each cell is
    ``mean [low, high]`` over seeds. ``None`` without a ``plain`` arm.
    """
    curves = _trajectories(document, "net_value", cumulative=True)
    if PLAIN not in curves:
        return None
    days = int(document["days"])
    checkpoints = sorted({d for d in range(7, days + 1, 7)} | {days})
    rows = {}
    for policy, values in curves.items():
        if policy == PLAIN:
            continue
        difference = values - curves[PLAIN]
        mean, low, high = _t_band(difference)
        rows[_label(document, policy)] = {f"day {d}": _interval(mean[d - 1], low[d - 1], high[d - 1]) for d in checkpoints}
    return pd.DataFrame.from_dict(rows, orient="index") if rows else None


def _interval(mean: float | None, low: float | None, high: float | None) -> str:
    """``mean [low, high]`` with one precision for all three (chosen by the mean's size)."""
    if mean is None or not math.isfinite(mean):
        return ""
    digits = _digits(mean)
    text = f"{mean:,.{digits}f}"
    if low is not None and high is not None and math.isfinite(low) and math.isfinite(high) and low != high:
        text += f" [{low:,.{digits}f}, {high:,.{digits}f}]"
    return text


def _digits(value: float) -> int:
    magnitude = abs(value)
    return 0 if magnitude >= 100 else 1 if magnitude >= 10 else 3


def _number(value: float) -> str:
    return f"{value:,.{_digits(value)}f}"


def _label(document: Mapping[str, Any], policy: str) -> str:
    return str((document.get("labels") or {}).get(policy, policy))


def _static_row(static: Mapping[str, Any] | None, policy: str) -> dict[str, float | None]:
    """One-shot numbers of a policy from the static evaluation's metrics.json."""
    if not static:
        return {}
    key = _STATIC_KEY.get(policy, policy)
    counterfactual = (static.get("counterfactual") or {}).get(key) or {}
    measured = (static.get("policies") or {}).get(key) or {}
    plain = (static.get("counterfactual") or {}).get(PLAIN) or {}
    row: dict[str, float | None] = {}
    net, plain_net = counterfactual.get("net_value"), plain.get("net_value")
    if net is not None:
        row["one-shot net value"] = float(net)
        if plain_net:
            row["one-shot net value / plain"] = float(net) / float(plain_net)
    if measured.get("gini") is not None:
        row["one-shot Gini"] = float(measured["gini"])
    return row


def summary_table(document: Mapping[str, Any], static: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Per policy: the rollout's totals (mean [95% CI] over seeds) beside the static numbers."""
    summary = document["summary"]
    plain_net = ((summary.get(PLAIN) or {}).get("net_value") or {}).get("mean")
    rows = {}
    for policy in document["policies"]:
        values = summary.get(policy, {})
        row: dict[str, Any] = {}
        for metric, label in _SUMMARY:
            cell = values.get(metric) or {}
            row[label] = _interval(cell.get("mean"), cell.get("ci_low"), cell.get("ci_high"))
        mean = (values.get("net_value") or {}).get("mean")
        row["net value / plain"] = (
            f"{mean / plain_net:.3f}" if mean is not None and plain_net and plain_net > 0 else ""
        )
        for name, value in _static_row(static, policy).items():
            row[name] = "" if value is None else (f"{value:.3f}" if "/" in name or "Gini" in name else _number(value))
        rows[_label(document, policy)] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def rollout_headline(document: Mapping[str, Any], policy: str = "trust_aware_balanced") -> str:
    """One honest sentence set: ``policy`` against the plain LambdaMART over the whole rollout.

    Each metric gives both means with their 95% intervals across seeds and says whether the
    difference is clear (the intervals of the paired per-seed differences exclude zero).

    Examples
    --------
    >>> doc = {"days": 7, "seeds": [0, 1], "policies": ["trust_aware_balanced", "plain"], "labels": {},
    ...        "cumulative": [{"policy": p, "seed": s, "net_value": v, "orders": 10.0, "bad_order_rate": 0.1,
    ...                        "buyer_retention": 0.5} for p, s, v in
    ...                       [("trust_aware_balanced", 0, 12.0), ("trust_aware_balanced", 1, 13.0),
    ...                        ("plain", 0, 10.0), ("plain", 1, 10.5)]]}
    >>> print(rollout_headline(doc).splitlines()[1])
      net value 12.5 vs 10.2 (difference +2.2 [-0.9, +5.4], 2 seeds): no clear difference
    """
    cumulative = pd.DataFrame(document["cumulative"])
    seeds = len(document.get("seeds") or [])
    days = document.get("days")
    who = _label(document, policy)
    if cumulative.empty or PLAIN not in set(cumulative["policy"]) or policy not in set(cumulative["policy"]):
        return f"closed loop ({days} days): no comparison of {who} with the plain LambdaMART (one of them was not run)"
    mine = cumulative.loc[cumulative["policy"] == policy].set_index("seed").sort_index()
    plain = cumulative.loc[cumulative["policy"] == PLAIN].set_index("seed").sort_index()
    lines = [f"closed loop over {days} days, {who} against the plain LambdaMART (mean over seeds, paired difference [95% CI]):"]
    for metric, words, higher_is_better in _HEADLINE:
        if metric not in mine.columns:
            continue
        a, b = mine[metric].astype(float), plain[metric].astype(float).reindex(mine.index)
        difference = (a - b).to_numpy()
        mean, low, high = (float(x[0]) for x in _t_band(difference[:, None]))
        if not math.isfinite(mean):
            continue
        if seeds >= 2 and math.isfinite(low) and math.isfinite(high) and (low > 0 or high < 0):
            better = (mean > 0) == higher_is_better
            verdict = "better" if better else "worse"
        else:
            verdict = "no clear difference"
        digits = _digits(max(abs(a.mean()), abs(b.mean())))
        band = f"{mean:+,.{digits}f}"
        if seeds >= 2:
            band += f" [{low:+,.{digits}f}, {high:+,.{digits}f}]"
        lines.append(f"  {words} {a.mean():,.{digits}f} vs {b.mean():,.{digits}f} "
                     f"(difference {band}, {seeds} seed{'s' if seeds != 1 else ''}): {verdict}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the page


def render_rollout_html(document: Mapping[str, Any], static: Mapping[str, Any] | None = None) -> str:
    """The rollout page as one self-contained HTML string (see the module docstring)."""
    policies = list(document["policies"])
    labels = {p: _label(document, p) for p in policies}
    facts = {
        "model": str(document.get("model_uri", "")),
        "bundle": str(document.get("model") or ""),
        "rollout starts": str(document.get("start", "")),
        "days": str(document.get("days", "")),
        "seeds": ", ".join(str(s) for s in document.get("seeds", [])),
        "bad-order cost": f"{document.get('bad_cost')} good orders",
        "snapshot rebuilt every": f"{document.get('rebuild_every_days', 1)} day(s)",
    }
    sections = [
        "<h1>Closed-loop rollout</h1>",
        '<p class="lead">Each policy served the simulated platform day by day after the end of the data; '
        "what it showed changed what buyers and creators did next. Bands are 95% intervals across seeds; "
        "every policy saw the same random draws for the same buyer, day and candidate.</p>",
        _facts(facts),
    ]
    headline = rollout_headline(document)
    sections += ["<h2>Against the plain LambdaMART</h2>", f"<pre>{_esc(headline)}</pre>"]
    gains = gain_over_plain_by_week(document)
    if gains is not None:
        sections += [
            _figure(_gain_png(document, policies, labels),
                    "Cumulative net value minus the plain LambdaMART's (same seed, same day). Below zero: the "
                    "policy is behind so far; a curve that rises over the weeks is trust paying off."),
            "<h3>Net value gained over the plain LambdaMART, by the end of each week</h3>",
            _table(gains, index=True),
        ]
    sections += [
        "<h2>Trajectories</h2>",
        _figure(_trajectories_png(document, policies, labels),
                "Per policy over the rollout's days: cumulative net value (good orders minus the cost times bad "
                "orders), buyers who opened the feed, long-tail creators who streamed, and the Gini of creator "
                "exposure (0 = equal)."),
        "<h2>Summary over the whole rollout</h2>",
        '<p class="lead">Mean over seeds [95% interval]. The one-shot columns are the static evaluation of the '
        "same model on held-out requests (counterfactual expected outcomes), where recorded.</p>",
        _table(summary_table(document, static), index=True),
    ]
    timing = document.get("timing") or {}
    if timing:
        frame = pd.DataFrame.from_dict(timing, orient="index").rename(index=labels).astype(float).round(1)
        sections += ["<h2>Time per policy (seconds, all seeds)</h2>", frame.to_html(border=0, float_format="{:.1f}".format)]
    notes = [
        "Net value = good orders - cost x bad orders; a bad order is one with an after-sales case for quality, "
        "not-as-described or counterfeit, or a 1-2 star review.",
        "Buyer retention = share of the buyers active in the first 7 days who are active in the last 7 "
        "(half the rollout when it is shorter than two weeks).",
        "Share of the oracle's gain = (net value - plain's) / (oracle's - plain's); the oracle ranks by the "
        "simulator's true expected net value.",
        "Expected net value = the slates each policy showed, valued with the simulator's click, purchase and "
        "bad-order probabilities at the positions shown instead of the drawn outcomes: the same comparison "
        "without the draw noise (a few hundred orders a seed make the drawn counts noisy).",
        "Buyers' visits a day at the end = feed requests a day over the last 7 days (half the rollout when it is "
        "shorter than two weeks): buyers who lost trust come less often.",
    ]
    if not static:
        notes.append("No static evaluation was found for this model, so the one-shot columns are left out.")
    sections += ["<h2>Notes</h2>", '<ul class="notes">' + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul>"]
    body = "\n".join(sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>trustfeed closed-loop rollout</title><style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def _band(axes: Any, days: np.ndarray, values: np.ndarray, colour: str, label: str) -> None:
    mean, low, high = _t_band(values)
    axes.plot(days, mean, color=colour, linewidth=2, label=label)
    if values.shape[0] >= 2:
        axes.fill_between(days, low, high, color=colour, alpha=0.18, linewidth=0)


def _gain_png(document: Mapping[str, Any], policies: Sequence[str], labels: Mapping[str, str]) -> bytes:
    curves = _trajectories(document, "net_value", cumulative=True)
    figure = _new_figure(9.0, 4.2)
    axes = figure.add_subplot()
    axes.axhline(0.0, color="#555", linewidth=1, linestyle="--", label=labels.get(PLAIN, PLAIN))
    for policy, values in curves.items():
        if policy == PLAIN:
            continue
        days = np.arange(1, values.shape[1] + 1)
        _band(axes, days, values - curves[PLAIN], _colour(policies, policy), labels[policy])
    for week in range(7, int(document["days"]) + 1, 7):
        axes.axvline(week, color="#ccc", linewidth=0.8)
    axes.set_xlabel("day of the rollout")
    axes.set_ylabel("cumulative net value - plain's")
    axes.legend(loc="upper left", fontsize=8, ncol=2)
    axes.grid(alpha=0.3)
    return _png(figure)


def _trajectories_png(document: Mapping[str, Any], policies: Sequence[str], labels: Mapping[str, str]) -> bytes:
    figure = _new_figure(10.0, 7.5)
    grid = figure.subplots(2, 2, sharex=True)
    for axes, (metric, title, cumulative) in zip(grid.ravel(), _TRAJECTORIES, strict=True):
        for policy, values in _trajectories(document, metric, cumulative).items():
            days = np.arange(1, values.shape[1] + 1)
            _band(axes, days, values, _colour(policies, policy), labels[policy])
        axes.set_title(title, fontsize=10)
        axes.grid(alpha=0.3)
    for axes in grid[1]:
        axes.set_xlabel("day of the rollout")
    handles, names = grid[0, 0].get_legend_handles_labels()
    figure.legend(handles, names, loc="outside lower center", ncol=min(4, max(1, len(names))), fontsize=8)
    return _png(figure)
