"""``trustfeed demo``: simulate a platform, build features, train, evaluate, write the report.

Everything lives under one output directory, including the MLflow store (sqlite
``mlflow.db`` plus ``mlruns/``), so the demo needs no server and leaves nothing elsewhere::

    <out>/events/            the simulated event log (+ truth/)
    <out>/features/          the trust snapshot as of the end of the log
    <out>/models/<run id>/   the local copy of the trained bundle and its evaluation
    <out>/report.html        the evaluation report (``trustfeed evaluate``), with metrics.json
    <out>/rollout.html       the closed-loop rollout (``trustfeed rollout``), with rollout.json
    <out>/mlflow.db, mlruns/ the MLflow tracking store
"""

from __future__ import annotations

import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..features.config import Choice, Config, Constraints, Integer, Items, Real, Text
from ..features.progress import NullProgress, Progress

if TYPE_CHECKING:  # pragma: no cover
    from .train import TrainJobConfig

__all__ = ["DemoConfig", "DemoResult", "demo_train_config", "run_demo"]


@dataclass(frozen=True)
class DemoConfig(Config):
    """Size of the demo (small enough for a few minutes on two cores).

    Parameters
    ----------
    merchants, days
        Size of the simulated platform.
    world
        The simulated world's setting (:data:`~trustfeed.training.simulate.WORLD_SETTINGS`):
        ``risky`` (default), a platform where about one feed order in five goes wrong and bad
        orders concentrate at low-trust shops, the live-commerce case the library is for; or
        ``default``, the simulator's own setting, where about one in ten goes wrong and even
        perfect knowledge cuts the bad-order rate by only 11-17% (docs/evaluation.md).
    snapshot_every_days
        Trust snapshots for the training data are built this often.
    num_rounds, early_stopping_rounds
        LambdaMART boosting rounds.
    target_gini
        An absolute target Gini for the exposure balancer; ``None`` (default): the training
        job sets it relative to the data (see ``target_gini_ratio``).
    target_gini_ratio
        Target Gini as a share of the creator-exposure Gini of the unbalanced trust-aware
        ranking on the validation window; ``None`` (default): the training job's own default
        (``TrainJobConfig.target_gini_ratio``), so the demo shows what ``trustfeed train``
        ships.
    balancer_max_move, balancer_relevance_floor
        The balancer's guards: how far an item may rise and how deep in the relevance order
        it may come from; ``None`` (default): the product's (``BalancerConfig``). Earlier demos
        forced 3 and 20, which held the old position-based lift within 5% of the unbalanced
        orders but also capped the cost-aware lift the product now uses (docs/rollout.md has
        the demo measured both ways).
    sweep_strengths
        Balancer strengths of the report's quality/fairness sweep.
    rollout_days, rollout_seeds, rollout_policies
        The closed-loop rollout after training: days each policy serves the simulated
        platform, seeds (trajectories per policy) and policies (``rollout_days=0`` skips it).
    experiment
        MLflow experiment name.
    """

    merchants: int = 200
    days: int = 56
    world: str = "risky"
    snapshot_every_days: int = 7
    num_rounds: int = 120
    early_stopping_rounds: int = 20
    target_gini: float | None = None
    target_gini_ratio: float | None = None
    balancer_max_move: int | None = None
    balancer_relevance_floor: int | None = None
    sweep_strengths: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0, 8.0)
    rollout_days: int = 14
    rollout_seeds: int = 4
    rollout_policies: tuple[str, ...] = ("trust_aware_balanced", "trust_aware", "plain", "oracle")
    experiment: str = "trustfeed-demo"

    constraints: ClassVar[Constraints] = {
        # at least two weeks: training, validation and held-out windows of whole days
        "days": Integer(low=14),
        "world": Choice("default", "risky"),
        **dict.fromkeys(("merchants", "snapshot_every_days", "num_rounds"), Integer(low=1)),
        **dict.fromkeys(("balancer_max_move", "balancer_relevance_floor"), Integer(low=1, optional=True)),
        "early_stopping_rounds": Integer(low=0),
        "target_gini": Real(0, 1, strict_low=True, strict_high=True, optional=True),
        "target_gini_ratio": Real(0, 1, strict_low=True, optional=True),
        "sweep_strengths": Items(Real(0), min_len=1),
        **dict.fromkeys(("rollout_days", "rollout_seeds"), Integer(low=0)),
        "rollout_policies": Items(Text()),
        "experiment": Text(),
    }

    def check(self) -> None:
        if self.rollout_days > 0 and self.rollout_seeds < 1:
            raise self.reject("rollout_seeds", "at least 1 when rollout_days > 0")
        if self.rollout_days > 0 and not self.rollout_policies:
            raise self.reject("rollout_policies", "at least one policy when rollout_days > 0")

@dataclass(frozen=True)
class DemoResult:
    """What the demo produced; ``mlflow_ui_command`` opens the MLflow UI on its store.

    ``rollout_path`` is the closed-loop rollout page and ``headline`` its comparison of the
    served policy with the plain LambdaMART (both ``None`` when the rollout is skipped).
    """

    report_path: Path
    metrics_path: Path
    mlflow_ui_command: str
    run_id: str
    model_uri: str
    tracking_uri: str
    seconds: float
    rollout_path: Path | None = None
    headline: str | None = None


def run_demo(
    out_dir: str | os.PathLike[str] = "trustfeed-demo",
    seed: int = 7,
    progress: Progress | None = None,
    config: DemoConfig | None = None,
) -> DemoResult:
    """Simulate, build features, train, run the closed loop and evaluate; everything under ``out_dir``.

    Parameters
    ----------
    out_dir
        Output directory (created; an earlier demo there is replaced step by step).
    seed
        Simulation seed.
    progress
        Receives one call per step.
    config
        :class:`DemoConfig` (size knobs).

    Returns
    -------
    DemoResult

    Examples
    --------
    >>> import tempfile
    >>> result = run_demo(tempfile.mkdtemp(), config=DemoConfig(merchants=30, days=21, num_rounds=10))  # doctest: +SKIP
    >>> result.report_path.name  # doctest: +SKIP
    'report.html'
    """
    from ..features.events import load_events
    from ..features.trust import build_snapshot
    from .evaluation import EvalConfig, evaluate
    from .evaluation.rollout_report import ROLLOUT_HTML, evaluate_rollout, rollout_headline
    from .registry import default_tracking_uri
    from .simulate import WORLD_SETTINGS, SimConfig, simulate, write_dataset
    from .train import train

    config = config or DemoConfig()
    progress = progress or NullProgress()
    started = time.perf_counter()
    out = Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    events_dir = out / "events"
    tracking_uri = default_tracking_uri(out)

    steps = 5 if config.rollout_days > 0 else 4
    progress(f"demo 1/{steps}: simulating {config.merchants} merchants over {config.days} days "
             f"(seed {seed}, {config.world} world)")
    world = WORLD_SETTINGS[config.world]
    platform = simulate(SimConfig(seed=seed, merchants=config.merchants, days=config.days, **world), progress=progress)
    write_dataset(platform, events_dir, progress=progress)

    progress(f"demo 2/{steps}: building the trust snapshot (trustfeed features)")
    events = load_events(events_dir)
    end = events["impressions"]["ts"].max().floor("D") + _one_day()
    build_snapshot(events, end, progress=progress).save(out / "features")

    progress(f"demo 3/{steps}: training the ranker and logging it to MLflow")
    evaluation = EvalConfig(sweep_strengths=config.sweep_strengths)
    result = train(
        demo_train_config(config, events_dir, tracking_uri, out / "models", evaluation=evaluation, run_name="demo"),
        progress=progress,
    )

    rollout_path = headline = None
    links: dict[str, str] = {}
    if config.rollout_days > 0:
        progress(f"demo 4/{steps}: closed-loop rollout, {config.rollout_days} days x {config.rollout_seeds} seeds "
                 f"({', '.join(config.rollout_policies)}; trustfeed rollout)")
        rolled = evaluate_rollout(
            result.model_uri, events_dir, out, days=config.rollout_days, seeds=config.rollout_seeds,
            policies=config.rollout_policies, tracking_uri=tracking_uri, progress=progress,
        )
        rollout_path, headline = rolled.html_path, rollout_headline(rolled.document)
        links[f"closed-loop rollout ({config.rollout_days} days)"] = ROLLOUT_HTML

    progress(f"demo {steps}/{steps}: evaluating on the held-out days (trustfeed evaluate)")
    evaluated = evaluate(events_dir, result.model_uri, out, progress=progress,
                         tracking_uri=tracking_uri, config=evaluation, links=links)
    command = f"mlflow ui --backend-store-uri {shlex.quote(tracking_uri)}"
    return DemoResult(
        report_path=evaluated.report_path,
        metrics_path=evaluated.metrics_path,
        mlflow_ui_command=command,
        run_id=result.run_id,
        model_uri=result.model_uri,
        tracking_uri=tracking_uri,
        seconds=time.perf_counter() - started,
        rollout_path=rollout_path,
        headline=headline,
    )


def demo_train_config(
    config: DemoConfig,
    events_dir: str | os.PathLike[str],
    tracking_uri: str,
    output_dir: str | os.PathLike[str],
    **fields: Any,
) -> TrainJobConfig:
    """The training job the demo runs on ``events_dir``: the product's job with the demo's sizes.

    ``fields`` set other :class:`~trustfeed.training.train.TrainJobConfig` fields (e.g.
    ``evaluate=False``: the same bundle without the in-job evaluation, as
    ``benchmarks/bench_serving.py`` trains the model it times).
    """
    from ..ranker.balancer import BalancerConfig
    from ..ranker.lambdamart import LambdaMARTConfig
    from .dataset import DatasetConfig
    from .train import TrainJobConfig

    product = BalancerConfig()
    gini_ratio = config.target_gini_ratio if config.target_gini_ratio is not None else TrainJobConfig.target_gini_ratio
    job: dict[str, Any] = {
        "events": Path(events_dir),
        "experiment": config.experiment,
        "tracking_uri": tracking_uri,
        "output_dir": Path(output_dir),
        "dataset": DatasetConfig(snapshot_every_days=config.snapshot_every_days),
        "model": LambdaMARTConfig(num_rounds=config.num_rounds, early_stopping_rounds=config.early_stopping_rounds),
        # without an absolute target_gini, the training job sets it from the data
        "balancer": BalancerConfig(
            max_move=product.max_move if config.balancer_max_move is None else config.balancer_max_move,
            relevance_floor=(product.relevance_floor if config.balancer_relevance_floor is None
                             else config.balancer_relevance_floor),
            target_gini=product.target_gini if config.target_gini is None else config.target_gini,
        ),
        "target_gini_ratio": gini_ratio if config.target_gini is None else None,
    }
    return TrainJobConfig(**{**job, **fields})


def _one_day() -> Any:
    import pandas as pd

    return pd.Timedelta(days=1)
