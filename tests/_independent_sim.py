"""An independent small marketplace generator to check the trust snapshot against.

Designed separately from ``training/simulate.py`` (no shared code, a different story), so the
trust code is not checked only against the assumptions of the simulator it was developed on.

Story
-----
Each merchant has a true bad-order probability ``p_bad = expit(logit(base[category]) - s * z)``
with a within-category standing ``z ~ N(0, 1)``; categories have very different base rates
(fresh food 20 % bad orders, books 1.5 %). True trust is ``1 - p_bad``. Order volume is
log-normal (many merchants with a handful of orders) and a tenth of the merchants opened during
the window. A bad order shows up as a quality-type case and/or a 1-2 star review, each only
sometimes; no-reason and logistics returns happen to everyone.

Attacks
-------
- **Brushers** (low standing) add 40-70 % fake orders, spaced over the window, from a mix of
  fresh one-shot accounts and *aged* ring accounts (accounts that follow creators and place
  decoy orders at honest shops); half of the fake amounts are normal-looking; most fake orders
  get a 5-star review, some written before delivery, most after.
- **Re-registered entities**: a banned old account (category A) comes back as a new merchant
  of the same ``entity_id`` under category B, with low standing.
- **False reports**: the best established merchants receive bursts of reports within two days
  from a few accounts, rejected or never reviewed.

Only contract tables are produced: merchants, creators, orders, after_sales, reviews, reports,
violations, guarantees, nps, follows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import expit, logit

START = pd.Timestamp("2026-03-01", tz="UTC")
CATEGORIES = np.array(["fresh_food", "apparel", "beauty", "electronics", "books"])
BASE_BAD = np.array([0.20, 0.12, 0.07, 0.035, 0.015])
AMOUNT_MEDIAN = np.array([30.0, 80.0, 60.0, 400.0, 25.0])
CASE_GIVEN_BAD = 0.55
REVIEW_GIVEN_BAD = 0.5
LOW_STARS_GIVEN_BAD_REVIEW = 0.85
# A bad real order shows up in the contract's bad-order rate (a quality-type case or a 1-2 star
# review) with this probability.
DETECTED = 1.0 - (1.0 - CASE_GIVEN_BAD) * (1.0 - REVIEW_GIVEN_BAD * LOW_STARS_GIVEN_BAD_REVIEW)


@dataclass(frozen=True)
class IndependentWorld:
    """The generated contract tables, the hidden truth and the snapshot time (end of window)."""

    tables: dict[str, pd.DataFrame]
    truth: pd.DataFrame
    as_of: pd.Timestamp


def _ts(days: np.ndarray) -> pd.DatetimeIndex:
    return START + pd.to_timedelta(np.asarray(days, dtype="float64") * 86_400.0, unit="s")


def _ids(prefix: str, n: int, start: int = 0) -> np.ndarray:
    return np.char.add(prefix, np.arange(start, start + n).astype(str))


def generate(seed: int, n_merchants: int = 400, days: int = 90, n_users: int = 6000) -> IndependentWorld:
    """Generate one world; every step is whole-array numpy.

    Returns
    -------
    IndependentWorld
        ``truth`` has ``merchant_id``, ``category``, ``true_trust`` (1 - true bad-order
        probability), ``p_bad``, ``observable_bad_rate`` (the contract's bad-order rate a real
        paid order is expected to have: ``p_bad`` times the chance a bad order gets a
        quality-type case or a 1-2 star review), ``is_brusher``, ``is_reregistered``.
    """
    rng = np.random.default_rng(seed)
    n = n_merchants
    mid = _ids("shop", n)
    cat = rng.integers(0, len(CATEGORIES), n)
    z = rng.normal(0.0, 1.0, n)
    order = rng.permutation(n)
    brusher = np.zeros(n, dtype=bool)
    brusher[order[: n // 10]] = True
    rereg = np.zeros(n, dtype=bool)
    rereg[order[n // 10 : n // 10 + n // 20]] = True
    # Attackers are bad merchants; their standing is drawn from the low tail.
    z = np.where(brusher | rereg, -np.abs(z) - 1.2, z)
    p_bad = expit(logit(BASE_BAD[cat]) - 0.9 * z)

    opened = np.where(rng.random(n) < 0.1, rng.uniform(0, days - 5, n), -rng.uniform(30, 400, n))
    opened = np.where(rereg, rng.uniform(5, days / 3, n), opened)
    active = days - np.maximum(opened, 0.0)
    rate = np.exp(rng.normal(np.log(0.4), 1.1, n)) * np.exp(0.2 * z)
    n_real = rng.poisson(rate * active)

    # Old, banned accounts of the re-registered entities, under another category.
    old_idx = np.flatnonzero(rereg)
    old_id = np.char.add("old", mid[old_idx])
    old_cat = (cat[old_idx] + rng.integers(1, len(CATEGORIES), len(old_idx))) % len(CATEGORIES)
    entity = np.char.add("ent", mid)
    merchants = pd.DataFrame(
        {
            "merchant_id": np.concatenate([mid, old_id]),
            "registered_at": np.concatenate([_ts(opened), _ts(-rng.uniform(200, 500, len(old_idx)))]),
            "entity_id": np.concatenate([entity, entity[old_idx]]),
            "category": np.concatenate([CATEGORIES[cat], CATEGORIES[old_cat]]),
        }
    )
    all_mid = merchants["merchant_id"].to_numpy()
    creators = pd.DataFrame(
        {"creator_id": np.char.add("host_", all_mid), "registered_at": merchants["registered_at"], "merchant_id": all_mid}
    )

    users = _ids("user", n_users)
    ring = _ids("ring", 250)

    # ---- real orders
    shop = np.repeat(np.arange(n), n_real)
    t_real = np.maximum(opened, 0.0)[shop] + rng.random(len(shop)) * active[shop]
    popularity = rng.pareto(1.5, n_users) + 1.0
    buyer = users[rng.choice(n_users, len(shop), p=popularity / popularity.sum())]
    amount = rng.lognormal(np.log(AMOUNT_MEDIAN[cat[shop]]), 0.6)
    bad = rng.random(len(shop)) < p_bad[shop]
    # Decoy orders of ring accounts at honest shops: they age the accounts.
    n_decoy = 600
    decoy_shop = rng.choice(np.flatnonzero(~brusher & ~rereg), n_decoy)
    decoy_t = np.maximum(opened, 0.0)[decoy_shop] + rng.random(n_decoy) * active[decoy_shop]
    decoy_amount = rng.lognormal(np.log(AMOUNT_MEDIAN[cat[decoy_shop]]), 0.6)

    # ---- fake orders of brushers
    fake_share = rng.uniform(0.4, 0.7, n)
    n_fake = np.where(brusher, rng.poisson(np.maximum(n_real, 5) * fake_share / (1 - fake_share)), 0)
    fshop = np.repeat(np.arange(n), n_fake)
    t_fake = np.maximum(opened, 0.0)[fshop] + rng.random(len(fshop)) * active[fshop]
    aged = rng.random(len(fshop)) < 0.5
    # Fresh accounts place 1-3 orders each at their one shop; aged ones come from the ring.
    fresh_buyer = np.char.add("fresh", (np.arange(len(fshop)) // 2).astype(str))
    fake_buyer = np.where(aged, ring[rng.integers(0, len(ring), len(fshop))], fresh_buyer)
    normal_amount = rng.lognormal(np.log(AMOUNT_MEDIAN[cat[fshop]]), 0.6)
    fake_amount = np.where(rng.random(len(fshop)) < 0.5, normal_amount, rng.uniform(0.5, 3.0, len(fshop)))

    o_shop = np.concatenate([shop, decoy_shop, fshop])
    o_t = np.concatenate([t_real, decoy_t, t_fake])
    keep = o_t < days
    o_user = np.concatenate([buyer, ring[rng.integers(0, len(ring), n_decoy)], fake_buyer])
    o_amount = np.round(np.concatenate([amount, decoy_amount, fake_amount]), 2)
    o_bad = np.concatenate([bad, rng.random(n_decoy) < p_bad[decoy_shop], np.zeros(len(fshop), dtype=bool)])
    o_fake = np.concatenate([np.zeros(len(shop) + n_decoy, dtype=bool), np.ones(len(fshop), dtype=bool)])
    o_shop, o_t, o_user, o_amount, o_bad, o_fake = (a[keep] for a in (o_shop, o_t, o_user, o_amount, o_bad, o_fake))
    m_orders = len(o_shop)
    oid = _ids("ord", m_orders)
    cancelled = (rng.random(m_orders) < 0.02 + 0.3 * p_bad[o_shop]) & ~o_fake
    late = rng.random(m_orders) < 0.03 + 0.8 * p_bad[o_shop]
    ship_delay = np.where(late, rng.uniform(2.2, 5.0, m_orders), rng.uniform(0.2, 1.8, m_orders))
    deliver = ship_delay + rng.uniform(1.0, 4.0, m_orders)
    orders = pd.DataFrame(
        {
            "order_id": oid,
            "user_id": o_user,
            "merchant_id": mid[o_shop],
            "created_at": _ts(o_t),
            "amount": o_amount,
            "creator_id": np.char.add("host_", mid[o_shop]),
            "status": np.where(cancelled, "cancelled", "paid"),
            "promised_ship_by": _ts(o_t + 2.0),
            "shipped_at": _ts(o_t + ship_delay),
            "delivered_at": _ts(o_t + deliver),
        }
    )
    paid = ~cancelled

    # ---- after-sales: quality-type cases for some bad orders, noise returns for everyone
    quality_case = o_bad & paid & (rng.random(m_orders) < CASE_GIVEN_BAD)
    noise_case = paid & ~o_fake & ~quality_case & (rng.random(m_orders) < 0.06)
    case_rows = np.flatnonzero(quality_case | noise_case)
    q = quality_case[case_rows]
    reason = np.where(
        q,
        np.where(rng.random(len(case_rows)) < 0.2 + 0.3 * (p_bad[o_shop[case_rows]] > 0.2), "counterfeit", rng.choice(["quality", "not_as_described"], len(case_rows))),
        rng.choice(["no_reason", "logistics", "other"], len(case_rows)),
    )
    opened_case = o_t[case_rows] + deliver[case_rows] + rng.uniform(0.5, 5.0, len(case_rows))
    slow = rng.random(len(case_rows)) < 0.1 + 1.5 * p_bad[o_shop[case_rows]]
    after_sales = pd.DataFrame(
        {
            "case_id": _ids("case", len(case_rows)),
            "order_id": oid[case_rows],
            "opened_at": _ts(opened_case),
            "type": np.where(q, rng.choice(["return", "refund_only", "refund_without_return"], len(case_rows)), "return"),
            "reason": reason,
            "resolved_at": _ts(opened_case + np.where(slow, rng.uniform(3.5, 9.0, len(case_rows)), rng.uniform(0.1, 2.5, len(case_rows)))),
            "outcome": np.where(q & (rng.random(len(case_rows)) < 0.8), "buyer_favor", rng.choice(["merchant_favor", "withdrawn"], len(case_rows))),
            "platform_intervened": q & (rng.random(len(case_rows)) < 0.3),
        }
    )

    # ---- reviews: complaints for bad orders, praise otherwise, 5 stars for most fake orders
    reviewed = paid & np.where(o_fake, rng.random(m_orders) < 0.85, rng.random(m_orders) < np.where(o_bad, REVIEW_GIVEN_BAD, 0.3))
    r_rows = np.flatnonzero(reviewed)
    rb, rf = o_bad[r_rows], o_fake[r_rows]
    rating = np.where(rf, 5, np.where(rb, rng.choice([1, 2, 3], len(r_rows), p=[0.55, LOW_STARS_GIVEN_BAD_REVIEW - 0.55, 1.0 - LOW_STARS_GIVEN_BAD_REVIEW]), rng.choice([3, 4, 5], len(r_rows), p=[0.1, 0.3, 0.6])))
    early = rf & (rng.random(len(r_rows)) < 0.3)
    r_delay = np.where(early, rng.uniform(0.1, 1.0, len(r_rows)) * deliver[r_rows], deliver[r_rows] + rng.uniform(0.2, 6.0, len(r_rows)))
    reviews = pd.DataFrame(
        {
            "review_id": _ids("rev", len(r_rows)),
            "order_id": oid[r_rows],
            "user_id": o_user[r_rows],
            "created_at": _ts(o_t[r_rows] + r_delay),
            "rating": rating.astype("int64"),
            "quality": np.clip(rating + rng.integers(-1, 2, len(r_rows)), 1, 5).astype("int64"),
        }
    )

    # ---- reports: genuine ones track p_bad; false bursts hit the best established shops
    exposure = np.bincount(o_shop[~o_fake], minlength=n)
    n_true_reports = rng.poisson(exposure * 0.15 * p_bad)
    tr_shop = np.repeat(np.arange(n), n_true_reports)
    tr_t = np.maximum(opened, 0.0)[tr_shop] + rng.random(len(tr_shop)) * active[tr_shop]
    established = (exposure >= 30) & ~brusher & ~rereg
    targets = np.flatnonzero(established)[np.argsort(-z[established])][: max(n // 25, 1)]
    burst_size = rng.integers(5, 21, len(targets))
    fr_shop = np.repeat(targets, burst_size)
    fr_t = np.repeat(rng.uniform(0, days - 2, len(targets)), burst_size) + rng.uniform(0, 2, len(fr_shop))
    rep_shop = np.concatenate([tr_shop, fr_shop])
    rep_t = np.concatenate([tr_t, fr_t])
    is_false = np.concatenate([np.zeros(len(tr_shop), dtype=bool), np.ones(len(fr_shop), dtype=bool)])
    verdict = np.where(is_false, np.where(rng.random(len(rep_shop)) < 0.6, "false", "none"), np.where(rng.random(len(rep_shop)) < 0.7, "true", "none"))
    verified = pd.array(np.where(verdict == "true", True, False), dtype="boolean")
    verified[verdict == "none"] = pd.NA
    reports = pd.DataFrame(
        {
            "report_id": _ids("rep", len(rep_shop)),
            "reporter_id": np.where(is_false, np.char.add("troll", rng.integers(0, 6, len(rep_shop)).astype(str)), users[rng.integers(0, n_users, len(rep_shop))]),
            "created_at": _ts(np.minimum(rep_t, days - 1e-3)),
            "category": rng.choice(["counterfeit", "false_advertising", "other"], len(rep_shop), p=[0.45, 0.45, 0.1]),
            "merchant_id": mid[rep_shop],
            "verified": verified,
        }
    )

    # ---- violations: rate rises with p_bad; the old accounts were banned before the window
    n_viol = rng.poisson(active / 30.0 * 3.0 * p_bad)
    v_shop = np.repeat(np.arange(n), n_viol)
    v_t = np.maximum(opened, 0.0)[v_shop] + rng.random(len(v_shop)) * active[v_shop]
    violations = pd.DataFrame(
        {
            "violation_id": _ids("vio", len(v_shop) + len(old_idx)),
            "merchant_id": np.concatenate([mid[v_shop], old_id]),
            "created_at": np.concatenate([_ts(v_t), _ts(-rng.uniform(20, 150, len(old_idx)))]),
            "severity": np.concatenate([rng.integers(1, 3, len(v_shop)), np.full(len(old_idx), 3)]).astype("int64"),
            "penalty": np.concatenate([rng.choice(["warning", "restriction"], len(v_shop)), np.full(len(old_idx), "ban")]),
        }
    )

    # ---- guarantees: better merchants enrol in more buyer-protection benefits
    benefits = np.array(["refund_without_return", "return_freight", "fake_one_pay_ten", "seven_day_no_reason", "fast_refund"])
    enrolled = rng.random((n, len(benefits))) < expit(0.8 * z + 0.2)[:, None]
    g_shop, g_benefit = np.nonzero(enrolled)
    g_start = np.maximum(opened, -100.0)[g_shop] + rng.uniform(0, 20, len(g_shop))
    left = rng.random(len(g_shop)) < 0.1
    guarantees = pd.DataFrame(
        {
            "merchant_id": mid[g_shop],
            "benefit": benefits[g_benefit],
            "enrolled_at": _ts(g_start),
            "left_at": pd.Series(_ts(g_start + rng.uniform(5, 60, len(g_shop)))).where(left),
        }
    )

    # ---- NPS: a sample of real buyers rate the shop they bought from
    nps_rows = np.flatnonzero(paid & ~o_fake & (rng.random(m_orders) < 0.08))
    score = np.clip(np.round(9.0 - 14.0 * p_bad[o_shop[nps_rows]] + rng.normal(0, 1.8, len(nps_rows))), 0, 10)
    nps = pd.DataFrame(
        {
            "response_id": _ids("nps", len(nps_rows)),
            "user_id": o_user[nps_rows],
            "merchant_id": mid[o_shop[nps_rows]],
            "created_at": _ts(o_t[nps_rows] + deliver[nps_rows] + 3.0),
            "score": score.astype("int64"),
        }
    )

    # ---- follows: most real users and every ring account follow a few hosts
    f_user = np.concatenate([users[rng.random(n_users) < 0.75], ring, ring])
    follows = pd.DataFrame(
        {
            "user_id": f_user,
            "creator_id": np.char.add("host_", mid[rng.integers(0, n, len(f_user))]),
            "followed_at": _ts(-rng.uniform(1, 200, len(f_user))),
        }
    )

    as_of = START + pd.Timedelta(days=days)
    tables = {
        "merchants": merchants,
        "creators": creators,
        "orders": orders,
        "after_sales": after_sales,
        "reviews": reviews,
        "reports": reports,
        "violations": violations,
        "guarantees": guarantees,
        "nps": nps,
        "follows": follows,
    }
    # Cases, reviews and NPS answers of late orders fall after the window, as in a real export
    # taken later: a snapshot as of the window's end must ignore them.
    truth = pd.DataFrame(
        {
            "merchant_id": mid,
            "category": CATEGORIES[cat],
            "true_trust": 1.0 - p_bad,
            "p_bad": p_bad,
            "observable_bad_rate": p_bad * DETECTED,
            "is_brusher": brusher,
            "is_reregistered": rereg,
        }
    )
    return IndependentWorld(tables, truth, as_of)


@dataclass(frozen=True)
class AttackedWorld:
    """An :class:`IndependentWorld` with exit scams and report bombing added, and their truth.

    ``attacks`` has ``merchant_id``, ``exit_scam_at`` and ``bombed_from`` / ``bombed_until``
    (NaT where the merchant was not attacked).
    """

    tables: dict[str, pd.DataFrame]
    truth: pd.DataFrame
    attacks: pd.DataFrame
    as_of: pd.Timestamp


def with_attacks(world: IndependentWorld, seed: int, n_scams: int = 8, n_bombed: int = 8) -> AttackedWorld:
    """Add attacks to a generated world (a story of its own, not the project simulator's).

    Exit scam ("clearance sale"): a busy, good shop opens a sale at ``exit_scam_at`` in the
    last fortnight; orders from newly created accounts pour in at five times its usual rate;
    from then on it ships nothing, except a fifth of the orders that go out as counterfeits,
    which draw counterfeit cases a few days after delivery. Report bombing: fresh accounts
    that never bought anything file 15-50 reports against a good busy shop within 36 hours;
    the platform has reviewed none of them yet.
    """
    rng = np.random.default_rng(10_000 + seed)
    tables = {name: frame.copy() for name, frame in world.tables.items()}
    orders = tables["orders"]
    days = (world.as_of - START) / pd.Timedelta(days=1)
    busy = orders.groupby("merchant_id").size()
    truth = world.truth.set_index("merchant_id")
    good = truth.index[(truth["true_trust"] >= truth["true_trust"].median()) & ~truth["is_brusher"] & ~truth["is_reregistered"]]
    pool = busy.reindex(good).dropna()
    pool = pool[pool >= 60].index.to_numpy()
    picked = rng.choice(pool, min(len(pool), n_scams + n_bombed), replace=False)
    scammers, bombed = picked[:n_scams], picked[n_scams:]
    attacks = pd.DataFrame({"merchant_id": world.truth["merchant_id"]})
    switch = pd.Series(_ts(rng.uniform(days - 14, days - 6, len(scammers))), index=scammers)

    # ---- exit scams: the surge, then nothing shipped (or fakes)
    daily = busy.reindex(scammers).to_numpy() / days
    n_surge = rng.poisson(5.0 * daily * (days - (switch - START).dt.total_seconds().to_numpy() / 86_400))
    shop = np.repeat(scammers, n_surge)
    start_days = np.repeat((switch - START).dt.total_seconds().to_numpy() / 86_400, n_surge)
    t = start_days + rng.random(len(shop)) * (days - start_days)
    surge = pd.DataFrame(
        {
            "order_id": _ids("sale", len(shop)),
            "user_id": np.char.add("newbie", (np.arange(len(shop)) // 2).astype(str)),
            "merchant_id": shop,
            "created_at": _ts(t),
            "amount": np.round(rng.lognormal(np.log(80.0), 0.5, len(shop)), 2),
            "creator_id": np.char.add("host_", shop),
            "status": "paid",
            "promised_ship_by": _ts(t + 2.0),
            "shipped_at": _ts(t + 1.0),
            "delivered_at": _ts(t + 3.0),
        }
    )
    orders = pd.concat([orders, surge], ignore_index=True)
    created = pd.to_datetime(orders["created_at"], utc=True)
    after = orders["merchant_id"].map(switch)
    scam = (created >= pd.to_datetime(after, utc=True)).to_numpy(dtype=bool, na_value=False)
    ships_fake = scam & (rng.random(len(orders)) < 0.2)
    orders.loc[scam & ~ships_fake, ["shipped_at", "delivered_at"]] = pd.NaT
    tables["orders"] = orders.sort_values("created_at", kind="stable", ignore_index=True)
    fakes = orders[ships_fake & (rng.random(len(orders)) < 0.7)]
    opened = pd.to_datetime(fakes["delivered_at"], utc=True) + pd.to_timedelta(rng.uniform(0.5, 4.0, len(fakes)), unit="D")
    cases = pd.DataFrame(
        {
            "case_id": _ids("fakecase", len(fakes)),
            "order_id": fakes["order_id"].to_numpy(),
            "opened_at": opened.to_numpy(),
            "type": "refund_only",
            "reason": "counterfeit",
            "resolved_at": (opened + pd.Timedelta(days=2)).to_numpy(),
            "outcome": "buyer_favor",
            "platform_intervened": True,
        }
    )
    scam_ids = set(orders.loc[scam, "order_id"])
    kept = tables["after_sales"][~tables["after_sales"]["order_id"].isin(scam_ids)]
    tables["after_sales"] = pd.concat([kept, cases], ignore_index=True)
    tables["reviews"] = tables["reviews"][~tables["reviews"]["order_id"].isin(scam_ids)].reset_index(drop=True)
    attacks["exit_scam_at"] = pd.to_datetime(attacks["merchant_id"].map(switch), utc=True)

    # ---- report bombing
    start = pd.Series(rng.uniform(days - 20, days - 3, len(bombed)), index=bombed)
    size = rng.integers(15, 51, len(bombed))
    target = np.repeat(bombed, size)
    filed = np.repeat(start.to_numpy(), size) + rng.uniform(0, 1.5, len(target))
    bomb = pd.DataFrame(
        {
            "report_id": _ids("bomb", len(target)),
            "reporter_id": np.char.add("sock", rng.integers(0, 40, len(target)).astype(str)),
            "created_at": _ts(filed),
            "category": rng.choice(["counterfeit", "false_advertising"], len(target)),
            "merchant_id": target,
            "verified": pd.array([pd.NA] * len(target), dtype="boolean"),
        }
    )
    tables["reports"] = pd.concat([tables["reports"], bomb], ignore_index=True)
    attacks["bombed_from"] = pd.to_datetime(attacks["merchant_id"].map(_ts_series(start)), utc=True)
    attacks["bombed_until"] = pd.to_datetime(attacks["merchant_id"].map(_ts_series(start + 1.5)), utc=True)
    return AttackedWorld(tables, world.truth, attacks, world.as_of)


def _ts_series(days: pd.Series) -> pd.Series:
    return pd.Series(_ts(days.to_numpy()), index=days.index)
