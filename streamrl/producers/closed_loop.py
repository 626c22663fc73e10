"""The two kinds of traffic ``streamrl demo`` runs: the closed loop and the baseline arms.

**Learned arm** (:func:`run_closed_loop`, ``streamrl simulate --ranker-url URL``): simulated users
ask the ranking service for every slate over HTTP (random slates, propensity 1/n, until the
ranker has a verified policy loaded, and whenever it fails to answer); their views, clicks and
purchases go to Kafka, where the processor, learner and ranker close the loop. It records the
arm's reward curve, the wall time each event was produced and the wall time each policy version
was first served (what freshness is measured from), and a status file others pace themselves by.
Around an interest drift it also scores each slate against the best slate of the same request
(:class:`SameRequest`: the low-noise drift figures).

**Baseline arms** (:func:`run_arms`, ``streamrl baselines``): the same simulated world (same
:class:`SimConfig`, seed, users, drift points) served in-process by the oracle, a river online
model, online popularity and random. They never touch Kafka and never run ahead of the learned
arm when they follow its status file, so every arm is compared over the same event counts.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np

from streamrl.config import Settings
from streamrl.producers.http_policy import HttpRankerPolicy, RankerNotReady, RankerUnavailable
from streamrl.producers.policies import Policy, PopularityPolicy, RandomPolicy, Ranking
from streamrl.producers.simulator import SimConfig, Simulator, best_order, slate_reward
from streamrl.report import CurveRecorder

log = logging.getLogger(__name__)

#: What a slate request gives back: the slate, the policy version and the request id that served it.
Served = tuple[Ranking, int | None, str | None]

#: Files a run directory holds (one place for their names).
CURVES, STATUS, PRODUCED, SERVED = "curves.jsonl", "loop.json", "produced_wall.npy", "served_at.json"
BASELINE_ARMS = ("oracle", "river", "popularity", "random")


def reward_weights(settings: Settings) -> dict[str, float]:
    return {"view": settings.reward_view, "click": settings.reward_click, "purchase": settings.reward_purchase}


class RankerWithFallback:
    """The ranking service once it is ready; random slates (exact propensity 1/n) until then.

    Until the ranker has a policy, every request still goes to ``/rank``, as a feed client's
    would, and its 503 (no verified policy yet) gets a random slate for that request: the random
    warm-up runs at the closed loop's own pace. (Drawn locally without the round trip, the random
    slates ran ~3x faster than served ones, and a default demo served 20-38k events of them before
    its first policy; the learned arm's users, whose interests concentrate under good slates,
    started that much later: in-process, eight seeds, learned/oracle over 200-250k events 0.64
    after a 20k-event warm-up against 0.72 after the ~3.4k the learner needs; see
    docs/demo-findings.md.) While the ranker does not answer at all, slates are random without a
    call and ``/readyz`` is asked at most every ``check_every_s``. A failed ``/rank`` (no answer,
    or a 503 once it was ready) falls back to a random slate for that request and is counted in
    ``failures`` (the loop never stops for the ranker).

    Like a service's many feed clients, it keeps up to ``concurrency`` requests in flight, each on
    its own persistent connection (:meth:`submit`; the simulator sends the requests due next ahead).
    One at a time, each request waits a full round trip and the ranker's batcher never sees
    company: on 2 cores the loop then runs partly idle (~20% of both cores in a default demo).

    Like a feed client, it sends the items each user engaged with in the last ``session_ms`` of
    event time as the request's session context (``recent``): simulated time runs far faster than
    the wall clock, so a session's next request would otherwise reach the ranker before the
    processor has applied the clicks of the previous one. The window is 6 simulated hours: the demo's
    simulated clock runs ~2000x the wall clock, so the processor's apply lag (commit interval plus
    CPU contention, up to a few wall seconds) spans simulated hours; with 30 simulated minutes the
    context ran out before the stored state caught up (learned reward 0.777 -> 0.800 of the oracle
    in one default run each). Items the stored history already ends with are not appended twice.
    """

    def __init__(self, url: str, token: str = "", seed: int = 0, check_every_s: float = 0.1,
                 session_ms: int = 6 * 3600 * 1000, recent_len: int = 10, concurrency: int = 1) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.session_ms, self.recent_len = session_ms, recent_len
        self.recent: dict[str, list[tuple[int, str]]] = {}
        self.url, self.token = url, token
        self.http = self._connect()            # /readyz, and /rank one at a time
        self.concurrency = concurrency
        self._clients: list[HttpRankerPolicy] = [self.http]
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="rank") if concurrency > 1 else None
        self._lock = threading.Lock()
        self.fallback = RandomPolicy(seed)
        self.check_every_s = check_every_s
        self.live = False                       # the ranker has served a slate (and not failed since)
        self.up = False                         # the ranker answers HTTP (with or without a policy)
        self.failures = 0
        self.version: int | None = None
        self.last_request_id: str | None = None
        self._next_check = 0.0

    @property
    def served_at(self) -> dict[int, float]:
        """Wall time each policy version was first served, over every connection."""
        out: dict[int, float] = {}
        for client in self._clients:
            for v, t in list(client.served_at.items()):
                out[v] = min(t, out.get(v, t))
        return out

    def learn_one(self, ev) -> None:
        """Remember the user's engagement (the simulator calls this for every event it emits)."""
        if ev.type != "view":
            items = self.recent.setdefault(ev.user_id, [])
            items.append((ev.ts, ev.item_id))
            del items[:-self.recent_len]

    def _session(self, user_id: str, ts: int) -> list[str] | None:
        items = self.recent.get(user_id)
        return [i for t, i in items if t >= ts - self.session_ms] or None if items else None

    def _connect(self) -> HttpRankerPolicy:
        return HttpRankerPolicy(self.url, token=self.token, timeout_s=2.0, retries=1)

    def _random(self, user_id: str, candidates: list[str], k: int, ts: int) -> Served:
        with self._lock:
            return self.fallback.rank(user_id, candidates, k, ts), None, None

    def _client(self) -> HttpRankerPolicy:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._connect()
            with self._lock:
                self._clients.append(client)
        return client

    def _remote(self, client: HttpRankerPolicy, user_id: str, candidates: list[str], k: int, ts: int,
                recent: list[str] | None) -> Served:
        try:
            out = client.rank(user_id, candidates, k, ts, recent=recent)
        except RankerNotReady as e:            # up, no policy yet: the feed's fallback for this request
            with self._lock:
                was_live, self.live = self.live, False
                if was_live:
                    self.failures += 1
            if was_live:
                log.warning("ranker lost its policy (%s): random slates until it is ready again", e)
            return self._random(user_id, candidates, k, ts)
        except RankerUnavailable as e:
            with self._lock:
                self.failures += 1
                was_live, self.live, self.up = self.live, False, False
            if was_live:
                log.warning("ranker failed (%s): random slates until it is ready again", e)
            return self._random(user_id, candidates, k, ts)
        if not self.live:
            with self._lock:
                was_live, self.live = self.live, True
            if not was_live:
                log.info("ranker ready: closed loop from now on")
        self.version = client.version
        return out, client.version, client.last_request_id

    def submit(self, user_id: str, candidates: list[str], k: int, ts: int) -> Future:
        """Send a /rank request; the future gives ``(slate, policy_version, request_id)``
        (a random slate, version and id None, while the ranker has no policy, does not answer or
        fails)."""
        if not self.up and time.monotonic() >= self._next_check:
            self.up = self.http.probe() is not None
            self._next_check = time.monotonic() + self.check_every_s
        fut: Future = Future()
        if not self.up:
            fut.set_result(self._random(user_id, candidates, k, ts))
            return fut
        recent = self._session(user_id, ts)
        if self._pool is None:
            fut.set_result(self._remote(self.http, user_id, candidates, k, ts, recent))
            return fut
        return self._pool.submit(lambda: self._remote(self._client(), user_id, candidates, k, ts, recent))

    def rank(self, user_id: str, candidates: list[str], k: int, ts: int) -> Ranking:
        slate, self.version, self.last_request_id = self.submit(user_id, candidates, k, ts).result()
        return slate

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        for client in self._clients:
            client.close()


def write_json_atomic(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def read_status(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    try:
        return json.loads((Path(run_dir) / STATUS).read_text())
    except (OSError, ValueError):
        return None


class SameRequest:
    """Scores an arm's slates against the best slate of the same request, in expectation, into its curve.

    The drift figures compare the learned arm's reward with the oracle *arm*'s: two trajectories
    of the simulated world, whose ratio over a few thousand events moves by +-0.1-0.2 from one
    window to the next. Here each request served while the recorder's event count is in
    [``start``, ``end``) is scored with the simulator's own click and purchase probabilities for
    the same user state (:meth:`Simulator.expected_reward`, each slot's examination): the slate
    served and the best slate of the same candidates (the oracle arm's ranking rule), summed per
    curve window (:meth:`CurveRecorder.add_slate_values`). Their ratio is the policy's, not two
    trajectories': ``same_request_*`` in :func:`streamrl.report.drift_recovery`. Install as the
    simulator's :attr:`~Simulator.on_slate`.
    """

    def __init__(self, sim: Simulator, recorder: CurveRecorder, weights: dict[str, float], start: int,
                 end: int) -> None:
        self.sim, self.recorder, self.start, self.end = sim, recorder, start, end
        self.weights = (weights["click"], weights["purchase"])

    def __call__(self, user_id: str, candidates: list[str], slate: list[str]) -> None:
        if not self.start <= self.recorder.events < self.end:
            return
        values = self.sim.expected_reward(user_id, candidates, *self.weights)
        index = {c: n for n, c in enumerate(candidates)}
        served = [index[i] for i in slate if i in index]
        best = best_order(values, len(slate))
        bias = self.sim.cfg.position_bias
        self.recorder.add_slate_values(slate_reward(values, served, bias), slate_reward(values, best, bias))

    @classmethod
    def around_drift(cls, sim: Simulator, recorder: CurveRecorder, weights: dict[str, float],
                     before: int = 24_000, after: int = 24_000) -> "SameRequest | None":
        """A scorer for the requests from ``before`` events before the simulator's first drift to
        ``after`` events after it (None without a drift): the windows the drift figures read."""
        drift = min(sim.cfg.drift_at, default=None)
        return None if drift is None else cls(sim, recorder, weights, max(0, drift - before), drift + after)


def run_closed_loop(settings: Settings, cfg: SimConfig, max_events: int, ranker_url: str,
                    run_dir: str | os.PathLike, max_seconds: float | None = None, rate: float = 0.0,
                    window: int = 2000, stop: threading.Event | None = None, concurrency: int = 8) -> dict[str, Any]:
    """Simulate up to ``max_events`` events served by the ranker at ``ranker_url``, into Kafka.

    Stops early at ``max_seconds`` or when ``stop`` is set. ``rate`` > 0 caps events per second.
    Up to ``concurrency`` slate requests are in flight at once (see :class:`RankerWithFallback`).
    Writes ``curves.jsonl`` (arm ``learned``), ``produced_wall.npy`` (wall time each event was
    handed to the producer, by event sequence number), ``served_at.json`` and ``loop.json`` (with
    ``warmup_events``: events before the first slate a policy served).
    """
    from streamrl.kafka import ensure_topics
    from streamrl.producers.sink import EventSink

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    stop = stop or threading.Event()
    policy = RankerWithFallback(ranker_url, token=settings.serve_token.reveal(), seed=cfg.seed,
                                concurrency=concurrency)
    sim = Simulator(cfg, policy=policy)
    recorder = CurveRecorder(run_dir / CURVES, "learned", reward_weights(settings), window)
    sim.on_slate = SameRequest.around_drift(sim, recorder, reward_weights(settings))
    produced = np.full(max_events, np.nan)
    ensure_topics(settings, ["events.view", "events.click", "events.purchase"])
    started = last_status = time.monotonic()
    n = 0
    warmup: int | None = None    # events before the first slate the ranker served (random slates until then)

    def status(done: bool) -> dict[str, Any]:
        elapsed = time.monotonic() - started
        doc = {"events": n, "seconds": round(elapsed, 2), "events_per_s": round(n / elapsed, 1) if elapsed else 0.0,
               "policy_version": policy.version, "live": policy.live, "ranker_failures": policy.failures,
               "warmup_events": warmup,
               "drifts": sim.drifts, "done": done}
        write_json_atomic(run_dir / STATUS, doc)
        return doc

    with EventSink(settings) as sink:
        try:
            for ev in sim.events(max_events):
                sink.send(ev)
                produced[n] = time.time()
                if warmup is None and policy.version is not None:
                    warmup = n
                n += 1
                recorder.learn_one(ev)
                now = time.monotonic()
                if now - last_status >= 0.5:
                    last_status = now
                    status(False)
                    if stop.is_set() or (max_seconds is not None and now - started >= max_seconds):
                        break
                if rate > 0 and n > rate * (now - started):
                    time.sleep(min(0.05, n / rate - (now - started)))
        finally:
            recorder.flush()
            policy.close()
    np.save(run_dir / PRODUCED, produced[:n])
    write_json_atomic(run_dir / SERVED, {str(v): t for v, t in sorted(policy.served_at.items())})
    doc = status(True)
    log.info("closed loop: %d events in %.1fs, last policy v%s, %d ranker failures", n, doc["seconds"],
             policy.version, policy.failures)
    return doc


def arm_policy(arm: str, sim: Simulator, settings: Settings) -> Policy:
    """The in-process policy of a baseline arm, built on its own simulator."""
    from streamrl.producers.baselines import OraclePolicy, RiverCTRPolicy

    if arm == "oracle":
        return OraclePolicy(sim, settings.reward_click, settings.reward_purchase)
    if arm == "river":
        return RiverCTRPolicy({i["item_id"]: i["category"] for i in sim.catalog_items()})
    if arm == "popularity":
        return PopularityPolicy(settings.reward_purchase / max(settings.reward_click, 1e-9))
    if arm == "random":
        return RandomPolicy(sim.cfg.seed)
    raise ValueError(f"unknown arm {arm!r} ({', '.join(BASELINE_ARMS)})")


def run_arms(settings: Settings, cfg: SimConfig, max_events: int, run_dir: str | os.PathLike,
             arms: tuple[str, ...] = BASELINE_ARMS, follow: bool = True, window: int = 2000,
             stop: threading.Event | None = None, on_progress: Callable[[dict[str, int]], None] | None = None,
             ) -> dict[str, int]:
    """Run each baseline arm on its own copy of the simulated world, round-robin in small steps.

    With ``follow``, no arm runs ahead of the learned arm's event count (``loop.json``), and the
    run ends at the learned arm's final count; otherwise every arm runs ``max_events`` events.
    Returns the events each arm produced.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    stop = stop or threading.Event()
    weights = reward_weights(settings)
    streams, recorders, counts = {}, {}, {}
    for arm in arms:
        sim = Simulator(cfg)
        sim.use_policy(arm_policy(arm, sim, settings))
        streams[arm] = sim.events(max_events)
        recorders[arm] = CurveRecorder(run_dir / CURVES, arm, weights, window)
        counts[arm] = 0
    step = max(1, window // 4)
    target, final = (0, False) if follow else (max_events, True)
    while not stop.is_set():
        if follow:
            st = read_status(run_dir)
            if st is not None:
                target, final = min(int(st["events"]), max_events), bool(st["done"])
        moved = False
        for arm in arms:
            todo = min(step, target - counts[arm])
            if todo <= 0:
                continue
            for ev in streams[arm]:
                recorders[arm].learn_one(ev)
                counts[arm] += 1
                todo -= 1
                moved = True
                if todo <= 0:
                    break
        if on_progress is not None:
            on_progress(dict(counts))
        if final and all(c >= target for c in counts.values()):
            break
        if not moved:
            time.sleep(0.2)
    for rec in recorders.values():
        rec.flush()
    return counts

