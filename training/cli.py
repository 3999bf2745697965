"""The ``trustfeed`` command line: argument parsing and progress display only.

Every subcommand calls one library function. Errors that trustfeed raises on purpose
(:class:`~trustfeed.features.errors.TrustfeedError`) and bad paths become a one-line
message on stderr and exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

# Nothing of trustfeed is imported at module level: importing the features package takes
# seconds (pandas, pyarrow), and Ctrl-C during that must still be one line (see main).

__all__ = ["main", "build_parser"]

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_NOT_PROMOTED = 1


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("trustfeed")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..features.progress import StderrProgress
    from .demo import DemoConfig, run_demo

    result = run_demo(out_dir=Path(args.out), seed=args.seed, progress=StderrProgress(),
                      config=DemoConfig(world=args.world))
    print(f"report: {result.report_path}")
    if result.rollout_path is not None:
        print(f"rollout: {result.rollout_path}")
    print(f"mlflow ui: {result.mlflow_ui_command}")
    if result.headline:
        print(result.headline)
    return EXIT_OK


def _cmd_validate(args: argparse.Namespace) -> int:
    from ..features.events import load_events

    events = load_events(Path(args.events))
    print(events.summary())
    return EXIT_OK


def _cmd_simulate(args: argparse.Namespace) -> int:
    from ..features.io import check_output_dir
    from ..features.progress import StderrProgress
    from .simulate import WORLD_SETTINGS, SimConfig, simulate, write_dataset

    # the population and traffic options left out derive from --merchants (SimConfig)
    sizes = {name: getattr(args, name) for name in ("users", "creators", "requests_per_day", "orders_per_merchant_day")}
    config = SimConfig(seed=args.seed, merchants=args.merchants, days=args.days, **WORLD_SETTINGS[args.world],
                       **{name: value for name, value in sizes.items() if value is not None})
    check_output_dir(args.out, "simulated-dataset", force=args.force)  # before minutes of work
    progress = StderrProgress()
    platform = simulate(config, progress=progress)
    write_dataset(platform, Path(args.out), progress=progress, force=args.force)
    print(f"wrote {args.out}")
    return EXIT_OK


def _cmd_features(args: argparse.Namespace) -> int:
    from ..features._live import write_incremental, write_snapshot
    from ..features.errors import ConfigError
    from ..features.events import load_events, to_utc
    from ..features.io import check_output_dir
    from ..features.progress import StderrProgress
    from ..features.trust import build_snapshot

    if args.incremental != (args.source is not None):
        raise ConfigError("--incremental and --from SNAPSHOT_DIR go together")
    if (args.serving_tables is None) != (args.model is None):
        raise ConfigError("--serving-tables DIR and --model URI go together")
    if args.serving_tables is not None and args.incremental:
        raise ConfigError("--serving-tables needs the whole event log (the users' history): not with --incremental")
    check_output_dir(args.out, "trust-snapshot", force=args.force)  # before the work
    to_utc(args.as_of)  # a bad date fails before the events are read
    pipeline = None
    if args.serving_tables is not None:
        from ..serving import FeedRanker
        from ..serving._mapped_tables import KIND_MARKER

        check_output_dir(args.serving_tables, KIND_MARKER, force=args.force)
        # a model that does not load or verify fails now, not after the snapshot is built
        pipeline = FeedRanker.load(args.model, tracking_uri=args.tracking_uri, verify_key=_verify_key(args),
                                   predictor="lightgbm").pipeline
    progress = StderrProgress()
    if args.incremental:
        write_incremental(args.source, Path(args.events), args.as_of, Path(args.out),
                          backend=args.backend, force=args.force, progress=progress)
    else:
        events = load_events(Path(args.events))
        if args.keep_state:
            snapshot = write_snapshot(events, args.as_of, Path(args.out), backend=args.backend, force=args.force,
                                      progress=progress)
        else:
            snapshot = build_snapshot(events, as_of=args.as_of, backend=args.backend, progress=progress)
            snapshot.save(Path(args.out), force=args.force)
        if pipeline is not None:
            from ..serving import build_serving_tables

            digest = build_serving_tables(pipeline, snapshot, events, Path(args.serving_tables), force=args.force,
                                          progress=progress)
            print(f"wrote {args.serving_tables} (serving tables {digest[:8]})")
    print(f"wrote {args.out}")
    return EXIT_OK


def _cmd_train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ..features.progress import StderrProgress
    from .evaluation import EvalConfig
    from .train import TrainJobConfig, train

    config = TrainJobConfig(
        events=Path(args.events),
        until=args.until,
        experiment=args.experiment,
        tracking_uri=args.tracking_uri,
        register=args.register,
        signing_key=Path(args.signing_key) if args.signing_key else None,
        backend=args.backend,
        scheduler=args.scheduler,
        evaluate=args.evaluation != "off",
    )
    if args.evaluation == "full":
        config = replace(config, evaluation=EvalConfig())
    result = train(config, progress=StderrProgress())
    print(f"run id: {result.run_id}")
    print(f"model uri: {result.model_uri}")
    return EXIT_OK


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ..features.io import check_output_file
    from ..features.progress import StderrProgress
    from .evaluation import evaluate

    for name in ("report.html", "metrics.json"):  # checked before the work, not after it
        check_output_file(Path(args.out) / name)
    verify_key = _verify_key(args)
    result = evaluate(
        events=Path(args.events),
        model_uri=args.model,
        out_dir=Path(args.out),
        start=args.start,
        end=args.end,
        progress=StderrProgress(),
        tracking_uri=args.tracking_uri,
        verify_key=verify_key,
    )
    print(f"report: {result.report_path}")
    print(f"metrics: {result.metrics_path}")
    return EXIT_OK


def _cmd_rollout(args: argparse.Namespace) -> int:
    from ..features.progress import StderrProgress
    from .evaluation.rollout_report import evaluate_rollout, rollout_headline

    policies = None if args.policies is None else [name.strip() for name in args.policies.split(",") if name.strip()]
    output = evaluate_rollout(
        args.model,
        Path(args.events),
        Path(args.out),
        days=args.days,
        seeds=args.seeds,
        policies=policies,
        tracking_uri=args.tracking_uri,
        progress=StderrProgress(),
    )
    print(f"rollout: {output.json_path}")
    print(f"page: {output.html_path}")
    print(rollout_headline(output.document))
    return EXIT_OK


def _cmd_rank(args: argparse.Namespace) -> int:
    from ..features.errors import OutputError
    from ..features.io import check_output_file
    from ..serving import FeedRanker, rank_file

    check_output_file(args.out)
    if Path(args.requests).is_dir():
        raise OutputError(args.requests, "is a directory, expected a JSON-lines file of requests")
    # a one-shot batch: a compilation (seconds, more for big models) rarely pays back here
    ranker = FeedRanker.load(
        args.model, snapshot=args.snapshot, tracking_uri=args.tracking_uri, verify_key=_verify_key(args),
        predictor="lightgbm",
    )
    summary = rank_file(
        model_uri=args.model,
        requests_path=Path(args.requests),
        out_path=Path(args.out),
        snapshot=args.snapshot,
        ranker=ranker,
    )
    print(summary)
    return EXIT_OK


def _verify_key(args: argparse.Namespace) -> str | None:
    """``--verify-key``, else ``$TRUSTFEED_VERIFY_KEY``; checked to be a public key before any work."""
    path = args.verify_key or os.environ.get(VERIFY_KEY_ENV) or None
    if path is not None:
        from ..ranker.signing import load_verify_key

        load_verify_key(path)
    return path


def _cmd_keygen(args: argparse.Namespace) -> int:
    from ..ranker.signing import generate_keypair, key_id, load_verify_key

    private, public = generate_keypair(args.out)
    print(f"signing key (keep it secret, on the training host): {private}")
    print(f"verify key (give it to serving hosts): {public}")
    print(f"key id: {key_id(load_verify_key(public))}")
    return EXIT_OK


def _cmd_sign(args: argparse.Namespace) -> int:
    from ..features.errors import ConfigError
    from ..ranker.bundle import sign_bundle

    key = args.key or os.environ.get(SIGNING_KEY_ENV) or None
    if key is None:
        raise ConfigError(f"sign: no key: give --key PATH or set {SIGNING_KEY_ENV}")
    signed_by = sign_bundle(args.bundle, key)
    print(f"signed {args.bundle} with key {signed_by}")
    return EXIT_OK


def _cmd_promote(args: argparse.Namespace) -> int:
    from .registry import promote

    decision = promote(args.name, force=args.force, tracking_uri=args.tracking_uri)
    print(decision.reason)
    # a refusal is a decision, not an error: exit 1 lets scripts branch on it (like grep)
    return EXIT_OK if decision.promoted else EXIT_NOT_PROMOTED


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``trustfeed`` console script."""
    parser = argparse.ArgumentParser(
        prog="trustfeed",
        description="Trust-aware ranking for live-commerce feeds.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(handler=handler)
        return command

    demo = add("demo", _cmd_demo, "simulate a platform, build features, train, evaluate and write the report")
    demo.add_argument("--out", default="trustfeed-demo", help="output directory (default: ./trustfeed-demo)")
    demo.add_argument("--seed", type=int, default=7, help="simulation seed")
    demo.add_argument("--world", choices=_WORLDS, default="risky",
                      help="world setting: risky (default; bad orders common and concentrated) or default")

    validate = add("validate", _cmd_validate, "check an event-log dataset against the schema")
    validate.add_argument("--events", required=True, metavar="DIR", help="dataset directory")

    simulate = add("simulate", _cmd_simulate, "write a synthetic live-commerce dataset plus its hidden truth")
    simulate.add_argument("--out", required=True, metavar="DIR")
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument("--merchants", type=_positive_int, default=500)
    simulate.add_argument("--days", type=_positive_int, default=60)
    simulate.add_argument("--world", choices=_WORLDS, default="default",
                          help="world setting: default, or risky (bad orders common and concentrated; docs/evaluation.md)")
    # a platform-scale world (a million merchants) is cheap to simulate over a day or two with
    # lighter traffic; these default to what --merchants implies
    simulate.add_argument("--users", type=_positive_int, help="buyers (default: 20 per merchant)")
    simulate.add_argument("--creators", type=_positive_int, help="creators (default: 2 per merchant)")
    simulate.add_argument("--requests-per-day", type=_positive_int,
                          help="feed requests a day (default: 1 per merchant)")
    simulate.add_argument("--orders-per-merchant-day", type=float, metavar="RATE",
                          help="mean organic orders per active merchant and day (default: 5)")
    simulate.add_argument("--force", action="store_true", help=_FORCE_HELP)

    features = add("features", _cmd_features, "write the trust snapshot as of a date")
    features.add_argument("--events", required=True, metavar="DIR",
                          help="event log (with --incremental: only the rows added or changed since --from)")
    features.add_argument("--as-of", required=True, metavar="DATE", help="UTC date or ISO 8601 time")
    features.add_argument("--out", required=True, metavar="DIR")
    features.add_argument("--backend", choices=("pandas", "dask"), default="pandas")
    features.add_argument("--keep-state", action="store_true",
                          help="also write the state an incremental update starts from (OUT/state/)")
    features.add_argument("--incremental", action="store_true",
                          help="apply --events to the state of the snapshot --from instead of a full rebuild")
    features.add_argument("--from", dest="source", metavar="SNAPSHOT_DIR",
                          help="with --incremental: a snapshot written with its state")
    features.add_argument("--serving-tables", metavar="DIR",
                          help="also write the memory-mapped serving tables of --model for this snapshot "
                               "(FeedRanker.load(model, tables=DIR); the whole event log, not with --incremental)")
    features.add_argument("--model", metavar="URI", help="with --serving-tables: the model the tables are for")
    features.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI for a runs:/ or models:/ --model")
    features.add_argument("--verify-key", metavar="PATH", help=_VERIFY_HELP)
    features.add_argument("--force", action="store_true", help=_FORCE_HELP)

    train = add("train", _cmd_train, "train the ranker and log the run to MLflow")
    train.add_argument("--events", required=True, metavar="DIR")
    train.add_argument("--until", metavar="DATE", help="use events before this date (default: all)")
    train.add_argument("--experiment", default="trustfeed", metavar="NAME")
    train.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI (default: MLflow's own default)")
    train.add_argument("--register", metavar="NAME", help="register the model under NAME with alias 'challenger'")
    train.add_argument("--signing-key", metavar="PATH", default=os.environ.get(SIGNING_KEY_ENV),
                       help=f"sign the bundle with this Ed25519 private key (default: ${SIGNING_KEY_ENV})")
    train.add_argument("--evaluation", choices=("quick", "full", "off"), default="quick",
                       help="in-job held-out evaluation: quick = the latest few thousand held-out requests, no "
                            "quality/fairness frontier sweeps (default), full = all of them with the sweeps, "
                            "off = none (no held-out metrics on the run)")
    train.add_argument("--backend", choices=("pandas", "dask"), default="pandas",
                       help="build the training frame and train in this process (pandas) or on a Dask cluster")
    train.add_argument("--scheduler", metavar="ADDRESS",
                       help="Dask scheduler address, e.g. tcp://10.0.0.5:8786 (with --backend dask; default: a local cluster)")

    evaluate = add("evaluate", _cmd_evaluate, "offline evaluation: write report.html and metrics.json")
    evaluate.add_argument("--events", required=True, metavar="DIR")
    evaluate.add_argument("--model", required=True, metavar="URI")
    evaluate.add_argument("--out", required=True, metavar="DIR")
    evaluate.add_argument("--from", dest="start", metavar="DATE")
    evaluate.add_argument("--to", dest="end", metavar="DATE")
    evaluate.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI for runs:/ and models:/ URIs")
    evaluate.add_argument("--verify-key", metavar="PATH", help=_VERIFY_HELP)

    rollout = add("rollout", _cmd_rollout,
                  "closed-loop evaluation: serve a simulated platform day by day with each ranking policy")
    rollout.add_argument("--model", required=True, metavar="URI")
    rollout.add_argument("--events", required=True, metavar="DIR", help="a simulated dataset (with truth/)")
    rollout.add_argument("--out", required=True, metavar="DIR", help="where rollout.json and rollout.html go")
    # days and seeds are checked by the library, so a bad value is the usual one-line error
    rollout.add_argument("--days", type=int, default=28, help="days each policy serves (default: 28)")
    rollout.add_argument("--seeds", type=int, default=3, help="trajectories per policy (default: 3)")
    rollout.add_argument("--policies", metavar="A,B,...", help="comma-separated policy names (default: all)")
    rollout.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI for runs:/ and models:/ URIs")

    rank = add("rank", _cmd_rank, "rank a JSON-lines file of requests exactly as the serving API does")
    rank.add_argument("--model", required=True, metavar="URI")
    rank.add_argument("--requests", required=True, metavar="FILE.jsonl")
    rank.add_argument("--out", required=True, metavar="FILE.jsonl")
    rank.add_argument("--snapshot", metavar="PATH", help="trust snapshot directory to use instead of the bundled one")
    rank.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI for runs:/ and models:/ URIs")
    rank.add_argument("--verify-key", metavar="PATH", help=_VERIFY_HELP)

    keygen = add("keygen", _cmd_keygen, "write a new Ed25519 key pair for signing model bundles")
    keygen.add_argument("--out", required=True, metavar="DIR", help="writes DIR/signing.key and DIR/verify.key")

    sign = add("sign", _cmd_sign, "sign an existing model bundle (e.g. after review)")
    sign.add_argument("--bundle", required=True, metavar="DIR", help="the bundle directory (it holds MANIFEST.json)")
    sign.add_argument("--key", metavar="PATH", help=f"Ed25519 private key (default: ${SIGNING_KEY_ENV})")

    promote = add("promote", _cmd_promote, "move the 'champion' alias to the 'challenger' if it is not worse")
    promote.add_argument("name", metavar="NAME", help="registered model name")
    promote.add_argument("--force", action="store_true", help="promote even if held-out metrics are worse")
    promote.add_argument("--tracking-uri", metavar="URI")
    promote.epilog = "exit status: 0 promoted, 1 not promoted (the reason is printed), 2 bad input"
    return parser


SIGNING_KEY_ENV = "TRUSTFEED_SIGNING_KEY"
VERIFY_KEY_ENV = "TRUSTFEED_VERIFY_KEY"
_VERIFY_HELP = (
    f"refuse a bundle not signed by this Ed25519 public key (default: ${VERIFY_KEY_ENV}; "
    "without a key, a bundle is checked against its own manifest only)"
)
# the names of simulate.WORLD_SETTINGS, spelled here so that building the parser imports no
# simulator (tests/test_cli_help.py checks the two agree)
_WORLDS = ("default", "risky")

_FORCE_HELP = (
    "replace DIR even if it holds another trustfeed output (an earlier output of this command is "
    "always replaced; a directory trustfeed did not write never is)"
)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    if isinstance(error, OSError) and error.filename and error.strerror:
        text = f"{error.filename}: {error.strerror}"  # without the "[Errno 30]" prefix
    return text if len(text) <= 1000 else text[:997] + "..."


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:  # also while the libraries are still being imported
        print(f"trustfeed {args.command}: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    from ..features.errors import TrustfeedError

    try:
        if args.command == "evaluate":
            from ..serving._resolve import bounded_mlflow_http  # MLflow calls fail in seconds, not minutes

            with bounded_mlflow_http():
                return int(args.handler(args))
        return int(args.handler(args))
    except TrustfeedError as error:
        print(f"trustfeed {args.command}: error: {' '.join(str(error).split())[:1000]}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as error:
        # a bad path, a read-only or full file system, a busy mount point, ...
        print(f"trustfeed {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as error:
        if not type(error).__module__.startswith("mlflow"):
            raise  # a bug: keep the traceback
        # MLflow refusing a URI or a store (e.g. an unknown scheme) is bad input, not a bug
        print(f"trustfeed {args.command}: error: MLflow: {_one_line(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
