"""One exposure ledger for every worker of the platform, kept in Redis.

Each worker still ranks from its own in-process balancer, so a request never waits on the
network. What changes is what that balancer's ledger holds: a background thread

1. **pushes** the exposure this worker recorded since the last sync (summed per creator and
   merchant, one pipelined round trip of ``HINCRBYFLOAT``) into time buckets in Redis, and
2. **pulls** the platform-wide ledger back (every bucket still inside the window, decayed to
   now) and writes it into the local ledger, so the re-ranking and the Gini controller of
   every worker see the exposure of the whole platform, not their own share of it.

Redis layout: one hash per ``bucket`` seconds of wall-clock time, ``<prefix>:creators:<n>``
and ``<prefix>:merchants:<n>`` (``n = floor(t / bucket)``), field = id, value = exposure
recorded in that bucket. Each hash expires ``window`` seconds after its bucket, so the store
never grows past the window and needs no cleaning job. A bucket of age ``a`` counts with
weight ``2 ** (-a / half_life)``.

One controller for the platform: every worker measures the same platform Gini, but its
controller updates once per ``control_interval`` of its *own* requests, so with N workers each
integral would move N times slower than one worker's serving all the traffic. Each sync also
measures the worker's share of the platform's exposure (its own pushed exposure against the
whole ledger's, over the same decayed window) and sets its balancer's ``integral_step`` to the
inverse of that share: N workers' integrals then move together, as one controller's would,
and their strengths stay close (``SharedLedgerConfig.platform_controller``, off by default:
see docs/serving.md for what it measured).

When Redis is unreachable (down, restarted, network), ranking goes on unchanged: the worker
keeps recording locally and its pending exposure accumulates (one number per distinct id).
Its ledger then holds the last platform view it pulled plus its own exposure since, decaying
as usual, so the controller acts on a partial, ageing view, like a per-worker ledger. At the
next successful sync the pending exposure is pushed (nothing is lost) and the platform view
replaces the local one again. Every Redis call has a socket timeout, and only the sync thread
makes them. While unreachable, the worker's integral step goes back to 1: on its partial view
it is a per-worker controller until the platform view is back.
"""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import numpy as np
import pandas as pd

from ..features.config import Config, Constraints, Flag, Real, Text
from ..features.errors import ConfigError
from ..ranker.balancer import ExposureBalancer
from ..ranker.interfaces import Reranker
from ..ranker.metrics import position_exposure

__all__ = ["RedisLedger", "SharedLedgerConfig"]

_KINDS = ("creators", "merchants")
_MAX_BUCKETS = 1024  # hashes read per sync


@dataclass(frozen=True)
class SharedLedgerConfig(Config):
    """How the shared ledger is kept (bounds are checked).

    Parameters
    ----------
    url
        Redis URL, e.g. ``redis://127.0.0.1:6379/0``.
    prefix
        Key prefix; workers with the same prefix share one ledger.
    half_life
        Seconds after which shared exposure counts half.
    bucket
        Seconds of wall-clock time per Redis hash.
    window
        Seconds a bucket is kept (and read); ``None``: four half-lives.
    sync_interval
        Seconds between two syncs of the background thread (the latency bound of a worker's
        view of the others).
    timeout
        Socket timeout of every Redis call, in seconds.
    platform_controller
        Scale the worker's controller steps by the inverse of its share of the platform's
        exposure, so N workers' integrals move as one controller's would. Off by default:
        with the sync lag the scaled steps overshot on one of two simulated platforms
        (docs/serving.md); ``False`` keeps every worker's controller stepping on its own
        requests only (its integral moves at its share of the traffic).
    max_step
        Upper bound of that scale (a worker that just started and pushed little yet must not
        take one huge step).
    """

    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "trustfeed:ledger"
    half_life: float = 600.0
    bucket: float = 60.0
    window: float | None = None
    sync_interval: float = 1.0
    timeout: float = 0.25
    platform_controller: bool = False
    max_step: float = 64.0

    constraints: ClassVar[Constraints] = {
        **dict.fromkeys(("url", "prefix"), Text()),
        "platform_controller": Flag(),
        "max_step": Real(1.0),
        **dict.fromkeys(("half_life", "bucket", "sync_interval", "timeout"), Real(0, strict_low=True)),
        "window": Real(0, strict_low=True, optional=True),
    }

    def check(self) -> None:
        if self.window is not None and self.window < self.bucket:
            raise self.reject("window", f"at least one bucket ({self.bucket:g} s)")
        if self.kept / self.bucket > _MAX_BUCKETS:
            raise ConfigError(
                f"SharedLedgerConfig: the window ({self.kept:g} s) holds more than {_MAX_BUCKETS} buckets of "
                f"{self.bucket:g} s; set a longer bucket or a shorter window"
            )

    @property
    def kept(self) -> float:
        """Seconds of history read and kept in Redis."""
        return 4.0 * self.half_life if self.window is None else float(self.window)


class _SharedBalancer(ExposureBalancer):
    """An :class:`ExposureBalancer` that also hands what it records to a :class:`RedisLedger`."""

    _shared: RedisLedger

    def _record_slots(self, creator_slots: np.ndarray, merchants: list[str], positions: np.ndarray,
                      now: float | None) -> None:
        cfg = self.config
        exposure = position_exposure(positions, cfg.exposure_kind, cfg.exposure_patience)
        with self._lock:
            creators = [self._creators.ids[s] for s in creator_slots.tolist()]
        self._shared.add(creators, merchants, exposure)
        super()._record_slots(creator_slots, merchants, positions, now)

    def record_impressions(self, impressions: pd.DataFrame) -> None:
        super().record_impressions(impressions)  # validates first: a bad frame adds nothing
        if impressions.empty:
            return
        cfg = self.config
        exposure = position_exposure(impressions["position"].to_numpy(np.float64), cfg.exposure_kind,
                                     cfg.exposure_patience)
        self._shared.add(impressions["creator_id"].astype(str).tolist(),
                         impressions["merchant_id"].astype(str).tolist(), exposure)

    def apply_platform(self, exposure: Mapping[str, pd.Series], integral_step: float = 1.0) -> None:
        """Replace the local ledger's values by the platform's (decayed to now, true units).

        ``integral_step``: the controller's step scale from now on (see the module docstring).
        """
        with self._lock:
            self.integral_step = float(integral_step)
            hl = self.config.half_life
            growth = 1.0 if math.isinf(hl) else 2.0 ** ((self._clock - self._origin) / hl)
            for kind, ledger in (("creators", self._creators), ("merchants", self._merchants)):
                values = exposure[kind]
                if values.empty:
                    continue
                slots = ledger.slots(values.index.tolist())
                ledger.stored[slots] = values.to_numpy(np.float64) * growth
                if kind == "creators":
                    # exposure somewhere on the platform means a candidate there: in the population
                    ledger.last_seen[slots] = np.maximum(ledger.last_seen[slots], self._clock)
                ledger.total = float(ledger.stored[: ledger.size].sum())


class RedisLedger:
    """The platform's exposure ledger in Redis, synced with a worker's balancer.

    Create one per worker process and pass it to
    :class:`~trustfeed.serving.FeedRanker` (``shared_ledger=``); the ranker attaches its
    balancer (again after every reload). Call :meth:`close` at shutdown (it pushes what is
    pending).

    Parameters
    ----------
    config
        :class:`SharedLedgerConfig` (or its fields as keyword arguments).
    client
        A ``redis.Redis`` client to use instead of one made from ``config.url``.
    start
        Start the background sync thread (``False``: call :meth:`sync` yourself).
    """

    def __init__(self, config: SharedLedgerConfig | None = None, *, client: Any = None, start: bool = True,
                 **options: Any) -> None:
        self.config = config if config is not None else SharedLedgerConfig(**options)
        if client is None:
            import redis

            client = redis.Redis.from_url(
                self.config.url, socket_timeout=self.config.timeout, socket_connect_timeout=self.config.timeout,
                decode_responses=False,
            )
        self._client = client
        self._lock = threading.Lock()
        self._pending: dict[str, defaultdict[str, float]] = {kind: defaultdict(float) for kind in _KINDS}
        self._pending_bucket: int | None = None
        self._pushed: dict[int, float] = {}  # this worker's exposure pushed per bucket (its share)
        self._balancer: _SharedBalancer | None = None
        self.traffic_share: float | None = None
        self.connected = False
        self.last_sync: float | None = None
        self.last_error: str | None = None
        self.syncs = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(target=self._run, name="trustfeed-ledger-sync", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ wiring

    def attach(self, balancer: Reranker | None) -> ExposureBalancer | None:
        """The balancer to serve with: ``balancer``'s state, recording into this ledger too."""
        if balancer is None:
            return None
        # from_state builds an instance of the class it is called on
        shared = cast(_SharedBalancer, _SharedBalancer.from_state(balancer.config, balancer.state_dict()))
        shared._shared = self
        with self._lock:
            self._balancer = shared
        return shared

    # ------------------------------------------------------------------ recording

    def add(self, creators: list[str], merchants: list[str], exposure: np.ndarray) -> None:
        """Queue exposure for the next push (called by the balancer; no network)."""
        values = exposure.tolist()
        with self._lock:
            bucket = self._bucket(time.time())
            if self._pending_bucket is None:
                self._pending_bucket = bucket
            pending_creators, pending_merchants = self._pending["creators"], self._pending["merchants"]
            for creator, merchant, value in zip(creators, merchants, values, strict=True):
                pending_creators[creator] += value
                pending_merchants[merchant] += value

    @property
    def pending(self) -> int:
        """Distinct creators with exposure not yet pushed."""
        with self._lock:
            return len(self._pending["creators"])

    # ------------------------------------------------------------------ sync

    def _bucket(self, t: float) -> int:
        return int(t // self.config.bucket)

    def _key(self, kind: str, bucket: int) -> str:
        return f"{self.config.prefix}:{kind}:{bucket}"

    def sync(self) -> bool:
        """Push pending exposure and pull the platform ledger into the attached balancer.

        Returns whether Redis answered; on failure the pending exposure is kept for the next
        try and the local ledger is left as it is.
        """
        with self._lock:
            pending, self._pending = self._pending, {kind: defaultdict(float) for kind in _KINDS}
            bucket, self._pending_bucket = self._pending_bucket, None
            balancer = self._balancer
        now = time.time()
        try:
            if bucket is not None:
                self._push(pending, bucket)
            platform = self.platform_exposure(now)
        except Exception as error:  # noqa: BLE001 - any Redis or socket failure: keep serving locally
            self._requeue(pending, bucket)
            self.connected = False
            self.last_error = f"{type(error).__name__}: {error}"
            if balancer is not None:
                balancer.integral_step = 1.0  # a partial, local view: a per-worker controller
            return False
        if bucket is not None:
            self._pushed[bucket] = self._pushed.get(bucket, 0.0) + float(sum(pending["creators"].values()))
        self.connected = True
        self.last_error = None
        self.last_sync = now
        self.syncs += 1
        step = self._integral_step(float(platform["creators"].sum()), now)
        if balancer is not None:
            balancer.apply_platform(platform, step)
        return True

    def _integral_step(self, platform_total: float, now: float) -> float:
        """The inverse of this worker's share of the platform's exposure (1 without a share)."""
        first = self._bucket(now - self.config.kept)
        for old in [b for b in self._pushed if b < first]:
            del self._pushed[old]
        own = sum(value * self._weight(b, now) for b, value in self._pushed.items())
        self.traffic_share = own / platform_total if platform_total > 0.0 and own > 0.0 else None
        if not self.config.platform_controller or self.traffic_share is None:
            return 1.0
        return min(max(1.0 / self.traffic_share, 1.0), self.config.max_step)

    def _weight(self, bucket: int, now: float) -> float:
        """Decay weight of a bucket at ``now`` (as the platform ledger is read)."""
        return float(2.0 ** (-max(now - (bucket + 0.5) * self.config.bucket, 0.0) / self.config.half_life))

    def _push(self, pending: dict[str, defaultdict[str, float]], bucket: int) -> None:
        # exposure pending since an older bucket is filed under the bucket it started in, so a
        # long outage does not make old exposure look fresh
        expire = int(math.ceil(self.config.kept + self.config.bucket))
        pipe = self._client.pipeline(transaction=False)
        for kind in _KINDS:
            values = pending[kind]
            if not values:
                continue
            key = self._key(kind, bucket)
            for item, value in values.items():
                pipe.hincrbyfloat(key, item, value)
            pipe.expire(key, expire)
        pipe.execute()

    def _requeue(self, pending: dict[str, defaultdict[str, float]], bucket: int | None) -> None:
        with self._lock:
            for kind in _KINDS:
                target = self._pending[kind]
                for item, value in pending[kind].items():
                    target[item] += value
            if bucket is not None and (self._pending_bucket is None or bucket < self._pending_bucket):
                self._pending_bucket = bucket

    def platform_exposure(self, now: float | None = None) -> dict[str, pd.Series]:
        """The shared ledger decayed to ``now``: ``{"creators": Series, "merchants": Series}``.

        Raises whatever the Redis client raises when the store is unreachable.
        """
        now = time.time() if now is None else now
        last = self._bucket(now)
        first = self._bucket(now - self.config.kept)
        buckets = list(range(first, last + 1))
        pipe = self._client.pipeline(transaction=False)
        for kind in _KINDS:
            for b in buckets:
                pipe.hgetall(self._key(kind, b))
        replies = pipe.execute()
        out = {}
        for k, kind in enumerate(_KINDS):
            totals: dict[Any, float] = {}
            for b, reply in zip(buckets, replies[k * len(buckets) : (k + 1) * len(buckets)], strict=True):
                if not reply:
                    continue
                weight = self._weight(b, now)
                get = totals.get
                for item, value in reply.items():
                    totals[item] = get(item, 0.0) + float(value) * weight
            ids = [item.decode() if isinstance(item, bytes) else str(item) for item in totals]
            out[kind] = pd.Series(np.fromiter(totals.values(), np.float64, len(totals)),
                                  index=pd.Index(ids, dtype=object), dtype=np.float64)
        return out

    def _run(self) -> None:
        while not self._stop.wait(self.config.sync_interval):
            self.sync()

    def close(self, flush: bool = True) -> None:
        """Stop the sync thread; with ``flush``, push what is pending one last time."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5 * (self.config.timeout + self.config.sync_interval))
        if flush:
            self.sync()
