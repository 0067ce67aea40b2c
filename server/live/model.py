"""Live model scoring: the behaviour model scores connected clients off the accept path, in micro-batches.

Admission never waits for scikit-learn. The app's observer (:meth:`ModelScorer.observer`, or
:meth:`ModelScorer.observe` called directly) only puts the client's key into a bounded dict of pending keys —
repeats coalesce, so a reconnect storm costs one entry, and beyond ``max_pending`` new keys are dropped and
counted. A background task (:meth:`ModelScorer.run`) wakes every ``interval`` seconds, or as soon as ``max_batch``
keys are pending, and per micro-batch of at most ``max_batch`` keys queued at least ``settle`` seconds ago (so the
live rules, which apply events every ``live_flush_interval``, have fed the online features first):

1. reads each key's current feature vector from the online features (on the event loop: the same
   :class:`~stormguard.features.clients.online.OnlineClientFeatures` the live rules feed, which is not thread-safe), unless
   the caller handed a vector to :meth:`observe`;
2. scores the batch with :class:`~stormguard.models.behaviour.LiveScorer` in a worker thread
   (``asyncio.to_thread``): pandas and scikit-learn run there, the loop keeps serving;
3. writes the results to the reputation store with reason ``model:<profile>``.

**How the model's score meets the live rules' deductions** (both speak the store's scale, see
:mod:`stormguard.models.mapping`): the model sets a *floor-from-above* — a baseline the client's score is pulled
down to, never up. For each scored key the current (decayed) score ``s`` is read; when the model's score ``m`` is
lower than ``s - min_delta`` the store gets one atomic ``add(m - s)``; otherwise nothing is written. So

- a rule penalty is never undone by a model that finds the client typical (the model cannot raise a score: good
  standing still comes only from decay and the rules);
- the model does not stack on itself: scoring the same behaviour again finds ``s ≈ m`` and writes nothing; only
  behaviour that looks worse than the last verdict moves the score again;
- the write is a relative ``add``, not a ``set``: a rule penalty that lands between the read and the write (a
  Redis round trip) is kept, never overwritten (at worst the two stack once);
- with an engine, an ``add`` that reaches the block threshold blocks for the engine's ``block_seconds``, exactly
  like a rule penalty (allow-listed clients are scored, never blocked), and the gate is told about the block;
  with a bare store the model never blocks by itself.

``min_delta`` (1 point by default) keeps a model verdict from re-blocking a client whose block has just been
served: decay moves a score by far less than a point in five minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from stormguard.server.tasks import cancel_tasks

log = logging.getLogger("stormguard.model")

__all__ = ["ModelScorer", "ScoredKey", "check_model", "default_model_path", "resolve_model"]

#: Where a source checkout keeps the bundled default model (trained by ``data/make_model.py``).
DEFAULT_MODEL_NAME = "default-model.skops"


def default_model_path() -> Path | None:
    """``data/default-model.skops`` next to this checkout when it exists, else None (an installed wheel has no
    ``data/``: then the server runs without a model unless ``--model`` names one)."""
    here = Path(__file__).resolve().parent
    for root in (here.parent, here.parent.parent):
        candidate = root / "data" / DEFAULT_MODEL_NAME
        if candidate.is_file():
            return candidate
    return None


def resolve_model(value: str | os.PathLike[str] | None) -> Path | None:
    """The ``[server] model`` setting (``--model`` / ``--no-model``) → the bundle to load, or None for no model.

    ``"default"`` (the setting's default) → :func:`default_model_path` (None when the checkout has no
    ``data/default-model.skops``); ``""``, ``"none"``, ``"off"`` → None; anything else is a path, returned even
    when it does not exist so that loading it fails loudly (:class:`~stormguard.models.bundle.BundleError`).
    """
    if value is None:
        return None
    text = os.fspath(value).strip()
    if text.lower() in ("", "none", "off", "false"):
        return None
    if text.lower() == "default":
        return default_model_path()
    return Path(text).expanduser()


class ScoredKey:
    """One client's model verdict (handed to ``on_score``)."""

    __slots__ = ("key", "score", "profile", "tier", "previous", "written", "block_until")

    def __init__(self, key: str, score: float, profile: str, tier: str, previous: float | None = None,
                 written: bool = False, block_until: float = 0.0) -> None:
        self.key = key
        self.score = score
        self.profile = profile
        self.tier = tier
        self.previous = previous
        self.written = written
        self.block_until = block_until

    def __repr__(self) -> str:
        return (f"ScoredKey({self.key!r}, score={self.score:.3f}, profile={self.profile!r}, tier={self.tier!r}, "
                f"previous={self.previous}, written={self.written})")


def _load_scorer(model: Any) -> tuple[Any, Any]:
    """``model`` (a bundle path, a :class:`Bundle`, a fitted ReputationModel or a LiveScorer) → (LiveScorer,
    Bundle or None). A path that is not a usable behaviour bundle raises
    :class:`~stormguard.models.bundle.BundleError` naming the file and the problem."""
    from stormguard.models.behaviour import LiveScorer, ReputationModel
    from stormguard.models.bundle import Bundle, BundleError

    if isinstance(model, LiveScorer):
        return model, None
    if isinstance(model, ReputationModel):
        return LiveScorer(model), None
    if isinstance(model, Bundle):
        est = model.estimators.get("behaviour")
        if not isinstance(est, ReputationModel):
            raise BundleError(model.path or "<bundle>", "it holds no behaviour model")
        return LiveScorer(est), model
    if isinstance(model, str | os.PathLike):
        from stormguard.models.train import load_model

        rep_model, bundle = load_model(model, key=_bundle_key())
        return LiveScorer(rep_model), bundle
    raise TypeError(f"ModelScorer needs a bundle path, Bundle, ReputationModel or LiveScorer, not "
                    f"{type(model).__name__}")


def check_model(path: str | os.PathLike[str]) -> Path:
    """Load the bundle at ``path`` exactly as the scorer will (every check of :func:`load_bundle`, the behaviour
    kind and schema, ``$STORMGUARD_MODEL_KEY`` when set) and return its path; :class:`BundleError` otherwise.
    ``stormguard serve`` calls this before starting uvicorn so that a bad ``--model`` fails with one clear line."""
    from stormguard.models.train import load_model

    load_model(path, key=_bundle_key())
    return Path(path)


def _bundle_key() -> bytes | None:
    """The bundle HMAC key from ``$STORMGUARD_MODEL_KEY`` (as the train/score commands use it), if set."""
    key = os.environ.get("STORMGUARD_MODEL_KEY")
    return key.encode("utf-8") if key else None


class ModelScorer:
    """Bounded pending keys + the micro-batch task (see the module docstring).

    ``model``: bundle path, loaded bundle, ReputationModel or LiveScorer (a bad or missing bundle raises here, at
    construction, with the file named). ``reputation``: a ``ReputationEngine`` (its store, block threshold and
    allow-list are used) or a bare ``ReputationStore``. ``features``: the online features the live rules feed
    (anything with ``vector(key) -> dict | None``), or ``vector_of`` a callable key → vector. Without either,
    only vectors passed to :meth:`observe` are scored.

    Hooks (all optional, called on the event loop): ``on_batch(n_scored, n_written)``, ``on_latency(seconds)``
    (model time per batch, in the thread), ``on_drop()`` (a key refused because ``max_pending`` keys wait),
    ``on_error(exc)``, ``on_score(ScoredKey)``, ``on_block(key, block_until, score)``.
    """

    def __init__(self, model: Any, reputation: Any, features: Any = None, *,
                 vector_of: Callable[[str], Mapping[str, Any] | None] | None = None,
                 interval: float = 0.25, max_batch: int = 256, max_pending: int = 65_536,
                 settle: float = 0.1, min_delta: float = 1.0, source_kind: str = "live", clock: Callable[[], float] = time.time,
                 on_batch: Callable[[int, int], None] | None = None,
                 on_latency: Callable[[float], None] | None = None,
                 on_drop: Callable[[], None] | None = None,
                 on_error: Callable[[BaseException], None] | None = None,
                 on_score: Callable[[ScoredKey], None] | None = None,
                 on_block: Callable[[str, float, float], None] | None = None) -> None:
        if max_batch < 1 or max_pending < 1 or not interval > 0:
            raise ValueError("ModelScorer needs max_batch >= 1, max_pending >= 1 and interval > 0")
        self.scorer, self.bundle = _load_scorer(model)
        self.engine = reputation if hasattr(reputation, "store") and hasattr(reputation, "decide") else None
        self.store = reputation.store if self.engine is not None else reputation
        if not hasattr(self.store, "get") or not hasattr(self.store, "add"):
            raise TypeError("ModelScorer needs a ReputationEngine or a ReputationStore")
        if vector_of is None and features is not None:
            vector_of = features.vector
        self.vector_of = vector_of
        self.interval = float(interval)
        self.max_batch = int(max_batch)
        self.max_pending = int(max_pending)
        self.settle = float(settle)
        self.min_delta = float(min_delta)
        self.source_kind = source_kind
        self.clock = clock
        self.on_batch = on_batch or (lambda n, w: None)
        self.on_latency = on_latency or (lambda s: None)
        self.on_drop = on_drop or (lambda: None)
        self.on_error = on_error or (lambda exc: None)
        self.on_score = on_score
        self.on_block = on_block
        # key -> (vector or None, monotonic time first queued); dict order = queue order
        self._pending: dict[str, tuple[Mapping[str, Any] | None, float]] = {}
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._runtime: Any = None
        # counters (plain ints: read by metrics at scrape time)
        self.batches = 0
        self.scored = 0
        self.written = 0
        self.dropped = 0
        self.skipped = 0          # keys whose vector was gone by scoring time (expired or evicted)
        self.errors = 0
        self.max_batch_seen = 0
        self.last_latency = 0.0
        self.score_thread_ids: set[int] = set()

    # -- hot path ---------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._pending)

    def observe(self, key: str, vector: Mapping[str, Any] | None = None) -> bool:
        """Queue ``key`` for scoring (O(1), no I/O). ``vector`` None: read from the features at batch time.
        A key already pending keeps its place (its vector is refreshed). False when dropped (queue full)."""
        pending = self._pending
        queued = pending.get(key)
        if queued is not None:
            if vector is not None:
                pending[key] = (vector, queued[1])
            return True
        if len(pending) >= self.max_pending:
            self.dropped += 1
            self.on_drop()
            return False
        pending[key] = (vector, time.monotonic())
        if len(pending) % self.max_batch == 0 and self._wake is not None:
            self._wake.set()            # once per max_batch new keys, not on every observe of a long queue
        return True

    def observer(self, kind: str, ctx: Any, info: dict[str, Any]) -> None:
        """``Runtime`` observer: a client that opened, left or was refused by the limiter is (re)scored soon.
        Refusals by the reputation layer are ignored: a blocked client's refusals are not new behaviour."""
        if kind == "open" or kind == "close" or (kind == "refusal" and info.get("layer") != "reputation"):
            self.observe(ctx.identity.ip)

    # -- background -------------------------------------------------------------------------------------------
    async def run(self) -> None:
        """The background loop: a micro-batch every ``interval`` s, or sooner when ``max_batch`` keys wait.
        Each wake-up scores at most what was pending when it began (bounded), in batches of ``max_batch``."""
        self._wake = wake = asyncio.Event()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.interval)
            wake.clear()
            budget = -(-len(self._pending) // self.max_batch)
            for _ in range(budget):
                try:
                    if not await self.score_batch(wait_settle=True) and not self._ready():
                        break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:    # a bug or a store outage must not end live scoring for good
                    self.errors += 1
                    self.on_error(exc)
                    log.exception("live model batch failed")
                    break

    async def flush(self) -> int:
        """Score everything pending now, settled or not (tests, shutdown); returns the number of keys scored."""
        total = 0
        for _ in range(-(-len(self._pending) // self.max_batch)):
            total += len(await self.score_batch())
        return total

    def _ready(self) -> bool:
        """Whether the oldest pending key has settled (see ``settle`` in :meth:`_take`)."""
        first = next(iter(self._pending.values()), None)
        return first is not None and time.monotonic() - first[1] >= self.settle

    def _take(self, wait_settle: bool = False) -> list[tuple[str, Mapping[str, Any] | None]]:
        """Up to ``max_batch`` keys, oldest first (dict order: no key starves). With ``wait_settle`` only keys
        queued at least ``settle`` seconds ago: the live rules apply their events to the online features every
        ``live_flush_interval``, so a vector read sooner could miss the very event that queued the key."""
        pending = self._pending
        horizon = time.monotonic() - self.settle if wait_settle else math.inf
        items: list[tuple[str, Mapping[str, Any] | None]] = []
        for key, (vector, since) in pending.items():
            if len(items) >= self.max_batch or since > horizon:
                break
            items.append((key, vector))
        for key, _ in items:
            del pending[key]
        return items

    async def score_batch(self, wait_settle: bool = False) -> list[ScoredKey]:
        """Take up to ``max_batch`` pending keys, score them in a thread, write the store; returns the verdicts."""
        items = self._take(wait_settle)
        if not items:
            return []
        rows: list[dict[str, Any]] = []
        for key, vec in items:
            if vec is None and self.vector_of is not None:
                vec = self.vector_of(key)
            if vec is None:
                self.skipped += 1
                continue
            row = dict(vec)
            row["key"] = key
            rows.append(row)
        if not rows:
            return []
        self.max_batch_seen = max(self.max_batch_seen, len(rows))
        started = time.perf_counter()
        results = await asyncio.to_thread(self._score_rows, rows)
        self.last_latency = time.perf_counter() - started
        self.on_latency(self.last_latency)
        verdicts = await self._write(results)
        written = sum(v.written for v in verdicts)
        self.batches += 1
        self.scored += len(verdicts)
        self.written += written
        self.on_batch(len(verdicts), written)
        return verdicts

    def _score_rows(self, rows: list[dict[str, Any]]) -> list[tuple[str, float, str, str]]:
        """Worker thread: pandas + scikit-learn. One batch at a time, so the LiveScorer's UA cache is not shared."""
        self.score_thread_ids.add(threading.get_ident())
        frame = self.scorer.score(rows, source_kind=self.source_kind)
        return list(zip(frame["key"].astype(str).tolist(), frame["score"].astype(float).tolist(),
                        frame["profile"].astype(str).tolist(), frame["tier"].astype(str).tolist(), strict=True))

    async def _write(self, results: list[tuple[str, float, str, str]]) -> list[ScoredKey]:
        now = self.clock()
        verdicts = await asyncio.gather(*(self._write_one(k, s, p, t, now) for k, s, p, t in results),
                                        return_exceptions=True)
        out: list[ScoredKey] = []
        for v in verdicts:
            if isinstance(v, BaseException):
                self.errors += 1
                self.on_error(v)
                continue
            out.append(v)
            if self.on_score is not None:
                self.on_score(v)
        return out

    async def _write_one(self, key: str, score: float, profile: str, tier: str, now: float) -> ScoredKey:
        current = float((await self.store.get(key, now)).score)
        verdict = ScoredKey(key, score, profile, tier, current)
        delta = score - current
        if delta >= -self.min_delta:
            return verdict          # the model never raises a score, nor nudges it by less than min_delta
        block_score, block_seconds = None, 0.0
        engine = self.engine
        if engine is not None and not engine.evidence.allowed(key, None):
            block_score, block_seconds = engine.block_score(ip=key), float(engine.block_seconds)
        rep = await self.store.add(key, delta, f"model:{profile}", now=now, block_score=block_score,
                                   block_seconds=block_seconds)
        verdict.written = True
        verdict.block_until = float(rep.block_until)
        if rep.block_until > now and self.on_block is not None:
            self.on_block(key, float(rep.block_until), round(float(rep.score), 3))
        return verdict

    # -- wiring -----------------------------------------------------------------------------------------------
    @classmethod
    def for_runtime(cls, model: Any, rt: Any, **options: Any) -> ModelScorer:
        """A scorer over the app runtime's reputation service: its engine, and the online features of its live
        rules (``rt.reputation.live.features``)."""
        service = getattr(rt, "reputation", None)
        if service is None:
            raise ValueError("live model scoring needs the reputation service ([server] reputation = true)")
        live = getattr(service, "live", None)
        if live is None:
            raise ValueError("live model scoring needs the live rules' online features ([server] live_rules = true)")
        options.setdefault("settle", max(0.1, 2.0 * float(getattr(live, "flush_interval", 0.05))))
        return cls(model, service.engine, live.features, **options)

    def start(self, rt: Any = None) -> None:
        """Subscribe to the runtime's connection events, register metrics, tell the gate about model blocks, and
        start :meth:`run` (call from the running loop, e.g. the app's lifespan)."""
        if rt is not None and self._runtime is not rt:
            self._runtime = rt
            if self.observer not in rt.observers:
                rt.observers.append(self.observer)
            self._bind_metrics(rt)
            gate = getattr(getattr(rt, "reputation", None), "gate", None)
            if gate is not None and self.on_block is None:
                clock = self.clock
                self.on_block = lambda key, until, score: gate.note_block(key, until, score, clock())
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name="stormguard-model-scoring")

    async def stop(self) -> None:
        """Cancel the task and drop what is pending (a shutdown does not wait for scikit-learn)."""
        await cancel_tasks(self._task)
        self._task = None
        self._pending.clear()
        rt = self._runtime
        if rt is not None:
            with contextlib.suppress(ValueError):
                rt.observers.remove(self.observer)

    def _bind_metrics(self, rt: Any) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        r = rt.metrics.registry
        batches = Counter("stormguard_model_batches", "Live model micro-batches scored", registry=r)
        scored = Counter("stormguard_model_scored", "Clients scored by the live model", registry=r)
        written = Counter("stormguard_model_writes", "Model verdicts written to the reputation store", registry=r)
        dropped = Counter("stormguard_model_dropped", "Keys not queued for model scoring (pending queue full)",
                          registry=r)
        errors = Counter("stormguard_model_errors", "Live model batches or writes that failed", registry=r)
        latency = Histogram("stormguard_model_batch_seconds", "Model time per micro-batch (worker thread)",
                            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0), registry=r)
        Gauge("stormguard_model_pending", "Keys waiting for model scoring", registry=r).set_function(
            lambda: len(self._pending))
        prev_batch, prev_error = self.on_batch, self.on_error
        prev_latency, prev_drop = self.on_latency, self.on_drop

        def on_batch(n: int, w: int) -> None:
            batches.inc()
            scored.inc(n)
            written.inc(w)
            prev_batch(n, w)

        def on_error(exc: BaseException) -> None:
            errors.inc()
            log.warning("live model scoring failed: %s: %s", type(exc).__name__, exc)
            prev_error(exc)

        def on_latency(seconds: float) -> None:
            latency.observe(seconds)
            prev_latency(seconds)

        def on_drop() -> None:
            dropped.inc()
            prev_drop()

        self.on_batch, self.on_error, self.on_latency, self.on_drop = on_batch, on_error, on_latency, on_drop
