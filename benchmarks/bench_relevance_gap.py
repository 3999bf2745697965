"""How far the relevance (purchase) model is from the world's true purchase probabilities, one shot.

No closed loop: for each simulated platform (``SEED:IMPULSE``, ``--merchants``, ``--days``) the
script builds the job's training frame (weekly snapshots, the job's train / validation /
held-out windows), fits the purchase model (and LambdaMART) on the training days with the job's
settings, and re-ranks every held-out request by

* ``purchase_model``: the purchase model's score;
* ``lambdamart``: the trust-aware LambdaMART of the job;
* ``logged``: the logging policy's own order;
* ``truth``: the world's ``p_click x p_purchase`` (the best any ranking can do);
* ``truth_no_taste`` / ``truth_no_quality`` / ``truth_no_merchant``: the truth with one part
  of it replaced by a constant (the user's category taste, the creator's latent quality, the
  merchant's conversion offset): what knowing that part is worth.

Each ranking's expected orders (``sum exam(position) x p_click x p_purchase`` at its new
positions, the world's probabilities, no draw noise) are printed against the truth's.

Then: which part of the truth the purchase model does not see. Within each held-out request
the model's two stage scores are regressed on the parts of the true log-odds (user taste
``0.8 log affinity``, follows, creator quality and popularity, the merchant's offset); a
coefficient of 1 means the model moves with that part as much as the world does, 0 that it
does not see it. And per user-history segment (no past clicks, 1-3, more): per-request rank
correlation of the score with the true probability, and mean predicted vs true probability at
the top position (calibration).

``--variant LABEL:key=value,...`` trains the purchase model with ``PurchaseModelConfig``
overrides, ``drop=feature|feature`` leaves features out, ``context.key=value`` /
``dataset.key=value`` change the frame's ``ContextConfig`` / ``DatasetConfig``: settings compared
on the same data.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_relevance_gap.py --platforms 1:1 1:0 2:1 2:0 3:1 3:0
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import pandas as pd


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return np.log(p) - np.log1p(-p)


def _positions(request: np.ndarray, score: np.ndarray) -> np.ndarray:
    """1-based position of each row when its request is sorted by ``score`` (best first)."""
    order = np.lexsort((-score, request))
    sorted_req = request[order]
    starts = np.searchsorted(sorted_req, sorted_req, side="left")
    pos = np.empty(len(score), dtype=np.int64)
    pos[order] = np.arange(len(score)) - starts + 1
    return pos


def _demean(request: np.ndarray, values: np.ndarray) -> np.ndarray:
    _, inverse = np.unique(request, return_inverse=True)
    counts = np.bincount(inverse)
    if values.ndim == 1:
        return values - (np.bincount(inverse, weights=values) / counts)[inverse]
    return np.column_stack([_demean(request, values[:, j]) for j in range(values.shape[1])])


def _spearman_per_request(request: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    ra = _positions(request, a).astype(float)
    rb = _positions(request, b).astype(float)
    da, db = _demean(request, ra), _demean(request, rb)
    _, inverse = np.unique(request, return_inverse=True)
    cov = np.bincount(inverse, weights=da * db)
    var = np.sqrt(np.bincount(inverse, weights=da * da) * np.bincount(inverse, weights=db * db))
    ok = var > 0
    return float(np.mean(cov[ok] / var[ok]))


def _derived(name: str, X: np.ndarray, feature_names: tuple[str, ...], n_categories: int) -> np.ndarray:
    """A candidate feature computed from the frame's columns (``add=`` in a variant), to try
    before it is built into the assembler: ``taste<A>`` the category affinity shrunk toward an
    even spread by ``A`` pseudo-interactions (``(affinity n + A / K) / (n + A)``, n = orders +
    clicks); ``category_count`` the viewer's interactions in the category (``affinity x n``)."""
    column = {name: X[:, j] for j, name in enumerate(feature_names)}
    affinity, n = column["user_category_affinity"], column["user_orders"] + column["user_clicks"]
    if name.startswith("taste"):
        strength = float(name[len("taste"):])
        return (affinity * n + strength / max(n_categories, 1)) / (n + strength)
    if name == "category_count":
        return affinity * n
    raise SystemExit(f"unknown derived feature {name!r}")


def _forms(model: Any, config: Any, X_fit: np.ndarray, bought: np.ndarray, pos_fit: np.ndarray, X_valid: np.ndarray,
           bought_valid: np.ndarray, pos_valid: np.ndarray, X_held: np.ndarray, orders: Any, best: float, lm: Any,
           lm_inputs: tuple[np.ndarray, np.ndarray], names: list[str], monotone: list[int]) -> dict[str, Any]:
    """Other forms of the purchase model on the same rows (``--forms``), each as a share of the truth's orders:

    * ``direct``: one binary LightGBM stage, purchase on impression (every training row, the
      two-stage model's position coefficient as a fixed offset);
    * ``avg_direct``: the mean of its log probability and the two-stage model's;
    * ``stack_direct`` / ``blend_lm``: weights of the two-stage score and the direct stage's (or
      the trust-aware LambdaMART's score) fitted by logistic regression of purchase on the
      validation rows (``log position`` a free covariate), their weights printed beside.
    """
    import lightgbm as lgb

    from trustfeed.ranker._expected_value import logistic_regression

    out: dict[str, Any] = {}
    g = model.position_coef_
    params = {**config.lgb_params(config.min_data_in_leaf), "monotone_constraints": monotone,
              "monotone_constraints_method": "intermediate"}
    t0 = time.process_time()
    train_set = lgb.Dataset(X_fit, label=bought.astype(float), init_score=g * np.log(pos_fit), feature_name=names)
    valid_set = lgb.Dataset(X_valid, label=bought_valid.astype(float), init_score=g * np.log(pos_valid), reference=train_set)
    direct = lgb.train(params, train_set, num_boost_round=config.num_rounds, valid_sets=[valid_set],
                       callbacks=[lgb.early_stopping(config.early_stopping_rounds, verbose=False)])
    out["direct_cpu_s"] = round(time.process_time() - t0, 1)
    out["direct_trees"] = direct.best_iteration

    def log_direct(X: np.ndarray) -> np.ndarray:
        return -np.logaddexp(0.0, -direct.predict(X, raw_score=True, num_iteration=direct.best_iteration))

    two_held, two_valid = model.predict(X_held), model.predict(X_valid)
    d_held, d_valid = log_direct(X_held), log_direct(X_valid)
    out["direct"] = orders(d_held) / best
    out["avg_direct"] = orders(0.5 * (two_held + d_held)) / best
    ones, log_pos = np.ones(len(X_valid)), np.log(pos_valid)
    beta = logistic_regression(np.column_stack([ones, two_valid, d_valid, log_pos]), bought_valid)
    out["stack_direct"] = orders(beta[1] * two_held + beta[2] * d_held) / best
    out["stack_w"] = f"{beta[1]:.2f}/{beta[2]:.2f}"
    if lm is not None:
        lm_valid, lm_held = lm.predict(lm_inputs[0]), lm.predict(lm_inputs[1])
        beta = logistic_regression(np.column_stack([ones, two_valid, lm_valid, log_pos]), bought_valid)
        out["blend_lm"] = orders(beta[1] * two_held + beta[2] * lm_held) / best
        out["blend_w"] = f"{beta[1]:.2f}/{beta[2]:.2f}"
    return out


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = int(value)
        except ValueError:
            try:
                out[key] = float(value)
            except ValueError:
                out[key] = {"true": True, "false": False}.get(value.lower(), value)
    return out


def platform(seed: int, setting: str, merchants: int, days: int, variants: list[dict[str, Any]], lambdamart: bool,
             forms: bool = False) -> list[dict[str, Any]]:
    from trustfeed.features.events import validate_events
    from trustfeed.ranker.lambdamart import LambdaMART
    from trustfeed.ranker.purchase import PurchaseModel, PurchaseModelConfig
    from trustfeed.training.dataset import build_training_frame, time_split
    from trustfeed.training.simulate import RISKY, SimConfig, simulate
    from trustfeed.training.train import TrainJobConfig, _purchase_rows, _purchased, _windows

    started = time.perf_counter()
    world = dict(RISKY) if setting == "risky" else {"impulse_strength": float(setting or 1)}
    sim = simulate(SimConfig(seed=seed, merchants=merchants, days=days, **world))
    events = validate_events(sim.tables)
    job = TrainJobConfig(events="unused")
    windows = _windows(events, None, job.validation_fraction, job.evaluation.holdout_fraction)
    truth = sim.truth["impressions"]
    impressions = events["impressions"]
    keys = pd.DataFrame({"request_id": truth["request_id"].astype(str).to_numpy(),
                         "stream_id": truth["stream_id"].astype(str).to_numpy(),
                         "p_click": truth["p_click"].to_numpy(), "p_purchase": truth["p_purchase"].to_numpy()})
    creators = sim.truth["creators"][["creator_id", "quality", "popularity"]].astype({"creator_id": str})
    results = []
    frames: dict[str, Any] = {}
    for variant in variants:
        dataset = job.dataset
        context_over = variant.get("context", {})
        dataset_over = variant.get("dataset", {})
        from dataclasses import replace

        if context_over:
            dataset = replace(dataset, context=replace(dataset.context, **context_over))
        if dataset_over:
            dataset = replace(dataset, **dataset_over)
        key = repr(sorted(context_over.items())) + repr(sorted(dataset_over.items()))
        if key not in frames:
            frames[key] = build_training_frame(events, end=None, config=dataset)
        frame = frames[key]
        train_valid, held = time_split(frame, valid_from=windows.holdout_start)
        fit_part, valid_part = time_split(train_valid, valid_from=windows.valid_start)
        flags = _purchased(impressions)
        bought = _purchase_rows(fit_part, impressions, flags) >= 0
        bought_valid = _purchase_rows(valid_part, impressions, flags) >= 0
        overrides = dict(variant.get("purchase", {}))
        dropped = [name for name in str(overrides.pop("drop", "")).split("|") if name]
        added = [name for name in str(overrides.pop("add", "")).split("|") if name]
        keep = [j for j, name in enumerate(fit_part.feature_names) if name not in dropped]
        names = [fit_part.feature_names[j] for j in keep] + added
        n_categories = len(frame.schema["categories"]["merchant_category"])

        def features(part: Any) -> np.ndarray:
            X = part.features()
            return np.column_stack([X[:, keep], *[_derived(name, X, part.feature_names, n_categories) for name in added]])

        config = PurchaseModelConfig(**{**job.purchase_model.to_dict(), **overrides})
        t0 = time.process_time()
        model = PurchaseModel(config).fit(
            features(fit_part), fit_part.labels >= 1, bought, fit_part.positions,
            features(valid_part), valid_part.labels >= 1, bought_valid, valid_part.positions,
            feature_names=names, categorical=[c for c in fit_part.categorical if c in names],
            monotone=[fit_part.monotone[j] for j in keep] + [0] * len(added),
            request_ids=fit_part.frame["request_id"].to_numpy())
        fit_cpu = time.process_time() - t0
        hf = held.frame.assign(request_id=held.frame["request_id"].astype(str), stream_id=held.frame["stream_id"].astype(str),
                               creator_id=held.frame["creator_id"].astype(str))
        hf = hf.merge(keys, on=["request_id", "stream_id"], how="left", validate="many_to_one")
        hf = hf.merge(creators, on="creator_id", how="left")
        X = held.features()
        X_model = features(held)
        request = pd.factorize(hf["request_id"])[0]
        pc, pp = hf["p_click"].to_numpy(), hf["p_purchase"].to_numpy()
        eta = sim.meta["position_bias"]["eta"] if "position_bias" in sim.meta else 0.7

        def orders(score: np.ndarray) -> float:
            return float(np.sum(_positions(request, score) ** -eta * pc * pp))

        click_raw = model.click_booster_.predict(X_model, raw_score=True)
        intercept, h = model.click_offset_coef_  # the purchase stage's start from the click stage's score
        buy_raw = model.purchase_booster_.predict(X_model, raw_score=True) + intercept + h * click_raw
        score = model.predict(X_model)
        follows = X[:, list(held.feature_names).index("user_follows_creator")]
        quality = hf["quality"].to_numpy()
        popularity = hf["popularity"].to_numpy()
        creator_click = 1.5 * (quality - 0.65) + 0.8 * (popularity - 0.5)
        user_click = _logit(pc) + 1.3 - creator_click
        taste = user_click - 1.2 * follows  # 0.8 log(affinity + 0.05)
        creator_buy = 0.8 * (quality - 0.65)
        user_buy = 0.75 * taste + 0.8 * follows
        merchant_buy = _logit(pp) + 2.4 - user_buy - creator_buy
        sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
        truth_p = pc * pp
        no_taste = sig(user_click - taste + creator_click - 1.3) * sig(-2.4 + 0.8 * follows + creator_buy + merchant_buy)
        q_mean = float(np.nanmean(quality))
        no_quality = (sig(user_click + 1.5 * (q_mean - 0.65) + 0.8 * (popularity - 0.5) - 1.3)
                      * sig(-2.4 + user_buy + 0.8 * (q_mean - 0.65) + merchant_buy))
        no_merchant = pc * sig(-2.4 + user_buy + creator_buy)
        best = orders(truth_p)
        row: dict[str, Any] = {"platform": f"{seed}:{setting}", "variant": variant.get("label", "default"),
                               "features": len(names), "held_requests": int(request.max() + 1),
                               "fit_cpu_s": round(fit_cpu, 1),
                               "trees": f"{model.fit_info_['click_trees']}/{model.fit_info_['purchase_trees']}",
                               "valid_logloss": round(model.fit_info_["valid_purchase_logloss"], 5),
                               "start_h": round(model.click_offset_coef_[1], 2),
                               "purchase_model": orders(score) / best}
        if lambdamart and "lambdamart" not in frames:
            lm = LambdaMART(job.model).fit(
                fit_part.features(), fit_part.labels, fit_part.groups(), position=fit_part.positions,
                X_valid=valid_part.features(), y_valid=valid_part.labels, group_valid=valid_part.groups(),
                feature_names=frame.feature_names, categorical=frame.categorical, monotone=frame.monotone,
                feature_schema=frame.schema)
            frames["lambdamart"] = orders(lm.predict(X)) / best
            frames["lm_model"] = lm
        if lambdamart:
            row["lambdamart"] = frames["lambdamart"]
        if forms and row["variant"] == "default":
            row.update(_forms(model, config, features(fit_part), bought, fit_part.positions, features(valid_part),
                              bought_valid, valid_part.positions, X_model, orders, best,
                              frames.get("lm_model"), (valid_part.features(), X), names,
                              [fit_part.monotone[j] for j in keep] + [0] * len(added)))
        row["logged"] = orders(-hf["position"].to_numpy(dtype=float)) / best
        row["truth_no_taste"] = orders(no_taste) / best
        row["truth_no_quality"] = orders(no_quality) / best
        row["truth_no_merchant"] = orders(no_merchant) / best
        # which parts the stages move with (within request, truth = 1)
        parts_click = np.column_stack([taste, 1.2 * follows, creator_click])
        parts_buy = np.column_stack([0.75 * taste, 0.8 * follows, creator_buy, merchant_buy])
        ok = np.isfinite(parts_buy).all(axis=1)
        coef_click = np.linalg.lstsq(_demean(request[ok], parts_click[ok]), _demean(request[ok], click_raw[ok]), rcond=None)[0]
        coef_buy = np.linalg.lstsq(_demean(request[ok], parts_buy[ok]), _demean(request[ok], buy_raw[ok]), rcond=None)[0]
        row["click_coef taste/follows/creator"] = "/".join(f"{c:.2f}" for c in coef_click)
        row["buy_coef taste/follows/creator/merchant"] = "/".join(f"{c:.2f}" for c in coef_buy)
        clicks_before = X[:, list(held.feature_names).index("user_clicks")]
        for name, mask in (("new", clicks_before == 0), ("1-3", (clicks_before >= 1) & (clicks_before <= 3)),
                           ("4+", clicks_before >= 4)):
            if mask.sum() < 50:
                continue
            row[f"rho[{name}]"] = round(_spearman_per_request(request[mask], score[mask], truth_p[mask]), 3)
            row[f"pred/true[{name}]"] = round(float(np.mean(np.exp(score[mask])) / np.mean(truth_p[mask])), 2)
            row[f"share[{name}]"] = round(float(mask.mean()), 2)
        row["wall_s"] = round(time.perf_counter() - started, 1)
        results.append(row)
        print(row, flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--platforms", nargs="+", default=["1:1", "1:0", "2:1", "2:0", "3:1", "3:0"],
                        help="SEED:IMPULSE_STRENGTH or SEED:risky (simulate.RISKY)")
    parser.add_argument("--merchants", type=int, default=150)
    parser.add_argument("--days", type=int, default=45)
    parser.add_argument("--variant", action="append", default=[],
                        help="LABEL:key=value,... (PurchaseModelConfig; context.key=value: ContextConfig; dataset.key=value: DatasetConfig)")
    parser.add_argument("--no-lambdamart", action="store_true")
    parser.add_argument("--forms", action="store_true",
                        help="also other forms of the model: a direct purchase stage, averaged and stacked, a blend with LambdaMART")
    args = parser.parse_args()
    variants: list[dict[str, Any]] = [{"label": "default"}]
    for text in args.variant:
        label, _, rest = text.partition(":")
        items = [item for item in rest.split(",") if item]
        purchase = _parse_overrides([i for i in items if not i.startswith(("context.", "dataset."))])
        context = _parse_overrides([i[len("context."):] for i in items if i.startswith("context.")])
        dataset = _parse_overrides([i[len("dataset."):] for i in items if i.startswith("dataset.")])
        variants.append({"label": label, "purchase": purchase, "context": context, "dataset": dataset})
    rows = []
    for text in args.platforms:
        seed, _, impulse = text.partition(":")
        rows += platform(int(seed), impulse or "1", args.merchants, args.days, variants, not args.no_lambdamart, args.forms)
    table = pd.DataFrame(rows)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 40)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    numeric = ["purchase_model", "direct", "avg_direct", "stack_direct", "blend_lm", "lambdamart", "logged", "truth_no_taste", "truth_no_quality", "truth_no_merchant"]
    numeric = [c for c in numeric if c in table.columns]
    print("\nmean by variant and impulse setting (expected orders / truth's):")
    table["impulse"] = table["platform"].str.split(":").str[1]
    print(table.groupby(["variant", "impulse"])[numeric].mean().to_string(float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
