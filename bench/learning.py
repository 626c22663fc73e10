"""How well the demo's learner learns, without Kafka or processes: the learning loop alone.

The learned arm runs in-process on the demo's simulated world: every event goes through the
processor's reward join (:class:`~streamrl.consumers.state.UserState`, the demo's 5-minute
attribution window), transitions go into :class:`~streamrl.learner.worker.Learner` with the demo's
hyperparameters (``streamrl.demo.DEMO_LEARNER``), the learner takes ``updates_per_transition``
steps per transition, and every ``--publish-every`` events a copy of the online network becomes
the served policy (ε-greedy slates with exact propensities, as the ranker draws them; random
slates until ``min_transitions_to_publish``), plus the ranker's fast feedback layer
(:mod:`streamrl.serving.feedback_model`; as the demo's, it learns from each user's last slate joined to
the next request's session context, ``--feedback-source transitions``: from every transition as it
is emitted, ``--lag`` events late; ``--feedback-weight 0`` turns it off). Unlike the demo, the user state is current at every request and nothing waits on
the wall clock, so the figures are the learner's, not the pipeline's; the same seed gives the
same world as ``streamrl demo`` (the baselines' figures equal the demo's). The oracle and
popularity arms run on their own copies of the world.

Use it to try a learner setting in a few minutes (``--set sup-weight=1.0``), then confirm with
``streamrl demo``. Progress goes to stderr; the curves to ``--out`` (``streamrl report`` renders
them). Last line::

    learning reward_vs_oracle=<x> reward_vs_popularity=<y> learned=<r> oracle=<r> popularity=<r> \
updates=<n> events=<n> [drift_recovery_ratio=<z> same_request_pre=<x> same_request_post=<x> \
same_request_recovery=<z> drift_recovery_<arm>=<z> ...]

With ``--drift-at``, every learned request from 24k events before the drift to 24k after is
scored against the best slate of the same candidates for the same user, in expectation, as in
``streamrl demo`` (:class:`~streamrl.producers.closed_loop.SameRequest`; ``same_request_*``, the
demo's windows), and :class:`SameRequestBreakdown` prints on stderr where the learned arm loses:
per 4k events, and after the drift by how many of the user's history items were engaged since it.

    .venv/bin/python bench/learning.py [--events 250000] [--drift-at 80000] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from streamrl.catalog import ItemEmbeddings, TextEmbedder, item_text
from streamrl.config import Settings
from streamrl.consumers.state import JoinRules, UserState
from streamrl.demo import DEMO_LEARNER, DEMO_SETTINGS
from streamrl.learner.config import add_learner_args, config_from_args
from streamrl.learner.vocab import PAD
from streamrl.learner.worker import Learner
from streamrl.producers.closed_loop import SameRequest, arm_policy
from streamrl.producers.policies import Ranking
from streamrl.producers.simulator import SimConfig, Simulator, best_order, slate_reward
from streamrl.report import CurveRecorder, drift_recovery, load_curves, markdown_table, summarize
from streamrl.serving.explore import sample_slate
from streamrl.serving.feedback_model import FeedbackModel
from streamrl.serving.session import SessionJoin, centred_scores, joined_views

#: The feed client's session context, as the demo's (RankerWithFallback): last 10 engagements, 6 simulated hours.
SESSION_LEN, SESSION_MS = 10, 6 * 3600 * 1000


class SameRequestBreakdown:
    """The learned arm's slates against the best slate of the same request, around a drift.

    The drift figures compare the learned arm's reward with the oracle *arm*'s: two trajectories
    of the world, whose ratio over a few thousand events moves by +-0.1-0.2 between windows. Here
    every learned request from ``start`` on is scored in expectation (the simulator's click and
    purchase probabilities, the top slot's reward times each position's examination) four ways:
    the slate served, the best slate of the same candidates (what the oracle's ranking rule picks),
    the policy's own ranking (without the layer's correction) and the layer's ranking alone; with
    how many of the user's history items were engaged since the drift ("fresh"). Same request,
    same user state: the ratios are of the policy, not of two trajectories. The two rankings
    alone are greedy (the served slate has the ε-slots), and the layer's counts only the requests
    where its matrix is on (not those before a fall is flagged): it reads above the served figure
    without being a better ranking (served by the correction alone, the served figure was the
    same: docs/demo-findings.md).
    """

    CLASSES = ((0, 0, "0"), (1, 2, "1-2"), (3, 5, "3-5"), (6, 10 ** 9, "6+"))

    def __init__(self, sim: Simulator, start: int, weights: tuple[float, float]) -> None:
        self.sim, self.start, self.weights = sim, start, weights
        self.drift_ts: int | None = None     # the first request after the drift
        self.rows: list[tuple] = []          # (events, served, best, policy, layer or None, fresh)

    def record(self, events: int, ts: int, user_id: str, candidates: list[str], picked: list[int],
               policy_scores: np.ndarray, corr: np.ndarray | None, history_ts: list[int]) -> None:
        if events < self.start:
            return
        if self.drift_ts is None and self.sim.drifts:
            self.drift_ts = ts
        value = self.sim.expected_reward(user_id, candidates, *self.weights)
        slate = lambda order: slate_reward(value, order, self.sim.cfg.position_bias)
        k = len(picked)
        fresh = sum(t >= self.drift_ts for t in history_ts) if self.drift_ts is not None else 0
        self.rows.append((events, slate(picked), slate(best_order(value, k)),
                          slate(np.argsort(-policy_scores, kind="stable")[:k]),
                          # the layer's ranking where it corrects (off, its matrix is zero)
                          slate(np.argsort(-corr, kind="stable")[:k]) if corr is not None and corr.any() else None,
                          fresh))

    def _rows(self, start: int, end: int, fresh: tuple[int, int] | None = None) -> list[tuple]:
        """Requests in (start, end] events, with a number of fresh history items in ``fresh`` (inclusive)."""
        return [r for r in self.rows if start < r[0] <= end and (fresh is None or fresh[0] <= r[5] <= fresh[1])]

    def ratio(self, start: int, end: int, col: int = 1, fresh: tuple[int, int] | None = None) -> float | None:
        """Sum of column ``col`` over the best slates' sum, requests in (start, end] events."""
        rows = self._rows(start, end, fresh)
        if col == 4:
            rows = [r for r in rows if r[4] is not None]
        best = sum(r[2] for r in rows)
        return sum(r[col] for r in rows) / best if best else None

    def report(self, drift_at: int, end: int) -> None:
        """Prints the ratios per 4k events and, after the drift, per 8k events and freshness class
        (stderr). (The headline ``same_request_*`` figures are the demo's, from the curve.)"""
        f = lambda x: "-" if x is None else f"{x:.2f}"
        print("same request, served/best (policy alone, layer alone) per 4k events from the drift:", file=sys.stderr)
        cells = []
        for a in range(self.start, end, 4000):
            cells.append(f"{(a - drift_at) // 1000:+d}k {f(self.ratio(a, a + 4000))}"
                         f"({f(self.ratio(a, a + 4000, 3))},{f(self.ratio(a, a + 4000, 4))})")
        print("  " + "  ".join(cells), file=sys.stderr)
        for a in range(drift_at, end, 8000):
            print(f"  {(a - drift_at) // 1000}-{(a - drift_at) // 1000 + 8}k after, by fresh history items: " + "  ".join(
                f"{name}: {f(self.ratio(a, a + 8000, 1, (lo, hi)))}({f(self.ratio(a, a + 8000, 3, (lo, hi)))},"
                f"{f(self.ratio(a, a + 8000, 4, (lo, hi)))}) n={len(self._rows(a, a + 8000, (lo, hi)))}"
                for lo, hi, name in self.CLASSES), file=sys.stderr)


class InformedSlates:
    """A diagnostic upper bound (``--informed GROUP:SLATE``): after a drift, the requests of one
    group of users are served a slate made from the simulator's knowledge, every other request as
    the release serves it, so the drift figures say what knowing that group would be worth.

    Groups, by the user's history items engaged since the drift: ``stale`` (none), ``1-2``.
    Slates: ``best`` (the best slate of the request, the oracle's rule), ``affinity`` (ranked by
    the user's current topic affinity alone: no quality, no clickbait), ``map`` (ranked by the
    affinity of interests read off the history from before the drift, its items' topics moved by
    the drift's shift: a perfect map of old topics to new ones), ``map3`` (that map for the three
    most common topics only, the users' current mean interests for the rest: about what the
    population's evidence could tell), ``since`` (ranked by the affinity of interests read off
    the history items engaged since the drift, their topics as they are: what a user's own few
    engagements say; a request without any is served as the release). ``start``: ``drift`` (from the first request after it) or
    ``fall`` (once the feedback layer has flagged the fall).
    """

    GROUPS = {"stale": (0, 0), "1-2": (1, 2)}
    SLATES = ("best", "affinity", "map", "map3", "since")

    def __init__(self, sim: Simulator, spec: str, start: str, weights: tuple[float, float]) -> None:
        group, slate = self.parse(spec)
        if start not in ("drift", "fall"):
            raise ValueError(f"--informed-from is drift or fall, not {start!r}")
        self.sim, self.fresh, self.slate, self.start, self.weights = sim, self.GROUPS[group], slate, start, weights

    @classmethod
    def parse(cls, spec: str) -> tuple[str, str]:
        """``GROUP:SLATE`` as its two names (ValueError if either is unknown)."""
        group, _, slate = spec.partition(":")
        if group not in cls.GROUPS or slate not in cls.SLATES:
            raise ValueError(f"--informed wants GROUP:SLATE, GROUP one of {sorted(cls.GROUPS)}, SLATE one of "
                             f"{list(cls.SLATES)} (got {spec!r})")
        return group, slate

    def order(self, user_id: str, candidates: list[str], history: list[str], times: list[int], k: int,
              drift_ts: int | None, fallen: bool) -> np.ndarray | None:
        """The informed slate's candidate indices, or None where the request is not the group's."""
        if drift_ts is None or (self.start == "fall" and not fallen):
            return None
        lo, hi = self.fresh
        if not lo <= sum(t >= drift_ts for t in times) <= hi:
            return None
        sim = self.sim
        if self.slate == "best":
            value = sim.expected_reward(user_id, candidates, *self.weights)
        elif self.slate == "affinity":
            value = sim.true_affinity(user_id, candidates)
        elif self.slate == "since":
            since = [h for h, t in zip(history, times) if t >= drift_ts]
            if not since:
                return None
            value = sim.affinity_under(self._interests(since), candidates)
        else:
            value = sim.affinity_under(self._mapped([h for h, t in zip(history, times) if t < drift_ts]), candidates)
        return np.asarray(best_order(value, min(k, len(candidates))))

    def _interests(self, history: list[str]) -> list[float]:
        """Interests over topics read off ``history``: the share of its items in each topic."""
        k = self.sim.cfg.n_topics
        counts = np.bincount([t for t in self.sim.item_topics(history) if t >= 0], minlength=k).astype(np.float64)
        return (counts / max(counts.sum(), 1.0)).tolist()

    def _mapped(self, history: list[str]) -> list[float]:
        """Interests over topics read off ``history`` (its items' topics), moved by the drifts' shifts."""
        sim = self.sim
        k = sim.cfg.n_topics
        shift = sum(sim.shifts) % k
        old = np.asarray(self._interests(history))
        if self.slate == "map":
            return np.roll(old, -shift).tolist()      # the simulator's rotation: new interest j = old j + shift
        common = np.argsort(-np.asarray(sim.topic_popularity))[:3]
        theta = np.asarray(sim.mean_interests()) * old[np.setdiff1d(np.arange(k), common)].sum()
        theta[(common - shift) % k] += old[common]
        return theta.tolist()


class InProcessLearned:
    """The learned arm as a simulator policy: join events into transitions, train, serve."""

    def __init__(self, learner: Learner, rules: JoinRules, settings: Settings, publish_every: int,
                 seed: int, feedback: FeedbackModel | None = None, lag: int = 0,
                 session: SessionJoin | None = None, warmup: int = 0) -> None:
        self.learner, self.rules, self.settings = learner, rules, settings
        self.warmup = warmup              # no policy served before this many events (the demo's warm-up)
        self.feedback = feedback          # the ranker's fast feedback layer (None: off)
        self.session = session            # the layer learns from session joins, not transitions
        self.recent: dict[str, list[tuple[int, str]]] = {}   # the feed client's session context
        self.lag = lag                    # events between a transition's emission and its delivery
        self.queue: list[tuple[int, list]] = []   # (deliver at event count, transitions)
        self.publish_every = publish_every
        self.users: dict[str, UserState] = {}
        self.open: set[str] = set()       # users with pending joins
        self.rng = np.random.default_rng(seed)
        self.served: torch.nn.Module | None = None
        self.version: int | None = None
        self.events = self.transitions = 0
        self.owed = 0.0                   # fractional gradient steps carried over
        self.cfg = learner.cfg
        self.same_request: SameRequestBreakdown | None = None   # the drift diagnostics (--drift-at)
        self.informed: InformedSlates | None = None                # --informed: a group served from the simulator

    # --- the processor and the learner ------------------------------------------------------
    def learn_one(self, ev) -> None:
        st = self.users.get(ev.user_id)
        if st is None:
            st = self.users[ev.user_id] = UserState(ev.user_id)
        st.apply(ev)
        if ev.type != "view":             # what a feed client sends as ``recent`` (RankerWithFallback)
            items = self.recent.setdefault(ev.user_id, [])
            items.append((ev.ts, ev.item_id))
            del items[:-SESSION_LEN]
        self.open.add(ev.user_id)
        self.events += 1
        if self.events % 250 == 0:
            self._advance(ev.ts)
        if (self.events % self.publish_every == 0 and self.transitions >= self.cfg.min_transitions_to_publish
                and self.events >= self.warmup):
            self.served = copy.deepcopy(self.learner.online).eval()
            self.version = (self.version or 0) + 1

    def _advance(self, wm: int) -> None:
        out = []
        for uid in sorted(self.open):  # a fixed order: the run repeats exactly
            st = self.users[uid]
            out += st.advance(wm, self.rules)
            st.prune(wm, self.rules)
            if st.deadline(self.rules.window_ms) is None:
                self.open.discard(uid)
        if self.lag:                      # the pipeline's delay: deliver what is due, queue the rest
            if out:
                self.queue.append((self.events + self.lag, out))
            out = []
            while self.queue and self.queue[0][0] <= self.events:
                out += self.queue.pop(0)[1]
        if not out:
            return
        if self.feedback is not None and self.session is None:  # the ranker's child reads the transitions topic
            self._feed_layer(out)
        self.transitions += self.learner.ingest(out)
        self.owed += len(out) * self.cfg.updates_per_transition
        steps = int(self.owed)
        if steps:
            self.owed -= steps
            self.learner.train(steps)

    def _feed_layer(self, views: list) -> None:
        """The feedback layer learns ``views``; a detected fall is reported."""
        before, started = self.feedback.drifts, self.feedback.started
        self.feedback.update(views)
        if self.feedback.drifts != before:
            fresh = "from zero" if self.feedback.started != started else "kept"
            source = "session" if self.session is not None else "transitions"
            print(f"[learned] feedback layer ({source}): engagement fell at event {self.events} (fall "
                  f"{self.feedback.drifts}, D {fresh}, on for {self.feedback.hold} views)", file=sys.stderr)

    # --- the ranker -------------------------------------------------------------------------
    def rank(self, user_id: str, candidates: list[str], k: int, ts: int) -> Ranking:
        recent = None
        if self.session is not None:      # the ranker joins the user's last slate to this request's context
            recent = [i for t, i in self.recent.get(user_id, ()) if t >= ts - SESSION_MS] or None
            out = joined_views(self.session.outcomes(user_id, recent))
            if out:
                self._feed_layer(out)
        if self.served is None:
            p = 1.0 / len(candidates)
            picked = self.rng.choice(len(candidates), size=min(k, len(candidates)), replace=False)
            return [(candidates[n], p) for n in picked]
        st = self.users.get(user_id)
        entries = st.recent(self.cfg.history_len) if st else []
        hist, times = [h[2] for h in entries], [h[0] for h in entries]
        vocab = self.learner.vocab
        rows = vocab.lookup(hist).tolist()  # unknown items: PAD
        state = torch.tensor([[PAD] * (self.cfg.history_len - len(rows)) + rows])
        with torch.no_grad():
            scores = self.served.score(state, vocab.lookup(candidates))[0].numpy().astype(np.float64)
        policy_scores = scores            # the policy's own scores: the layer learns against them
        corr = self.feedback.correction(hist, candidates, times) if self.feedback is not None else None
        if corr is not None:              # as the ranker: a user with nothing since the fall gets a diverse slate
            scores = self.feedback.diversify(scores + corr, candidates, times, k)
        s = self.settings  # exploration as the ranker draws it
        informed = None
        if self.informed is not None:
            informed = self.informed.order(user_id, candidates, hist, times, k, self.same_request.drift_ts,
                                           self.feedback is not None and self.feedback.split_ts is not None)
        if informed is not None:
            picked, props = informed, np.ones(len(informed))
        else:
            picked, props = sample_slate(scores, k, s.serve_exploration, self.rng, epsilon=s.serve_epsilon,
                                         temperature=s.serve_temperature, pool=s.serve_softmax_pool)
        if self.session is not None:
            self.session.served(user_id, hist, [candidates[n] for n in picked], recent,
                                centred_scores(policy_scores, picked, len(picked)), times)
        if self.same_request is not None:
            self.same_request.record(self.events, ts, user_id, candidates, list(picked), policy_scores, corr, times)
        return [(candidates[n], float(p)) for n, p in zip(picked, props)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=250_000, help="events per arm [250000]")
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--drift-at", type=int, action="append", default=[], help="event count of an interest drift")
    ap.add_argument("--arms", default="oracle,popularity", help="baseline arms, comma list [oracle,popularity]")
    ap.add_argument("--publish-every", type=int, default=2500,
                    help="events between served policy versions (the demo: ~1 s at ~2.5k events/s) [2500]")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a DEMO_LEARNER setting (flag name without dashes, e.g. sup-weight=1)")
    ap.add_argument("--exploration", default=None, help="slate exploration of the learned arm [the demo's: epsilon]")
    ap.add_argument("--epsilon", type=float, default=None, help="serve_epsilon of the learned arm [the demo's]")
    ap.add_argument("--temperature", type=float, default=None, help="serve_temperature (softmax exploration)")
    ap.add_argument("--feedback-weight", type=float, default=None,
                    help="serve_feedback_weight: the ranker's fast feedback layer (0: off) [the default, 20]")
    ap.add_argument("--feedback-lr", type=float, default=None, help="serve_feedback_lr [0.1]")
    ap.add_argument("--feedback-hold", type=int, default=None, help="serve_feedback_hold [100000]")
    ap.add_argument("--feedback-decay", type=float, default=None, help="serve_feedback_decay [1e-4]")
    ap.add_argument("--feedback-diversity", type=float, default=None,
                    help="serve_feedback_diversity: a diverse slate for users with nothing since a fall (0: off) [1.0]")
    ap.add_argument("--lag", type=int, default=0,
                    help="events between a transition's emission and its delivery to the learner and the feedback "
                         "layer: the closed loop's pipeline delay (~0.5 s of transition lag: 1000-2200 events at "
                         "2-4.4k events/s) [0]")
    ap.add_argument("--feedback-source", choices=("transitions", "session"), default=None,
                    help="serve_feedback_source: the feedback layer learns from the transitions topic (delayed by "
                         "--lag) or from the ranker's join of each user's last slate to the next request's session "
                         "context [the demo's]")
    ap.add_argument("--warmup-events", type=int, default=0,
                    help="random slates until this many events, whatever the learner has: the demo's warm-up "
                         "before its first snapshot is served (its summary's warmup_events) [0]")
    ap.add_argument("--informed", default=None, metavar="GROUP:SLATE",
                    help="a diagnostic upper bound (with --drift-at): after the drift, serve GROUP (stale: users "
                         "with nothing engaged since it; 1-2: one or two items) a SLATE from the simulator's "
                         "knowledge: best, affinity, map (their history's topics moved by the drift's shift), "
                         "map3 (that for the three most common topics, the users' mean interests for the rest) "
                         "or since (the topics of the items engaged since the drift); see InformedSlates")
    ap.add_argument("--informed-from", choices=("drift", "fall"), default="drift",
                    help="--informed from the drift or from the feedback layer's flagged fall [drift]")
    ap.add_argument("--out", default=None, help="run directory for curves.jsonl/report [a temp dir]")
    args = ap.parse_args()
    if args.informed:
        if not args.drift_at:
            ap.error("--informed needs --drift-at")
        try:
            InformedSlates.parse(args.informed)
        except ValueError as e:
            ap.error(str(e))
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    learner_args = dict(DEMO_LEARNER)
    for kv in args.set:
        key, _, val = kv.partition("=")
        learner_args[key.strip().lstrip("-").replace("_", "-")] = val.strip()
    # the learner's own flags parse the values (``--set prioritized=false`` is False, a misspelt key an error)
    flags = argparse.ArgumentParser(prog="bench/learning.py --set", add_help=False)
    add_learner_args(flags)
    cfg = config_from_args(flags.parse_args([a for k, v in learner_args.items() for a in (f"--{k}", str(v))]))
    settings = Settings.from_env().replace(**DEMO_SETTINGS)
    for name, val in (("serve_exploration", args.exploration), ("serve_epsilon", args.epsilon),
                      ("serve_temperature", args.temperature), ("serve_feedback_weight", args.feedback_weight),
                      ("serve_feedback_lr", args.feedback_lr), ("serve_feedback_hold", args.feedback_hold),
                      ("serve_feedback_decay", args.feedback_decay), ("serve_feedback_source", args.feedback_source),
                      ("serve_feedback_diversity", args.feedback_diversity)):
        if val is not None:
            settings = settings.replace(**{name: val})
    rules = JoinRules.from_settings(settings)
    sim_cfg = SimConfig(n_users=args.users, n_items=args.items, seed=args.seed, drift_at=sorted(args.drift_at))
    run_dir = Path(args.out or tempfile.mkdtemp(prefix="bench-learning-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    curves = run_dir / "curves.jsonl"
    curves.unlink(missing_ok=True)

    sim = Simulator(sim_cfg)
    items = sim.catalog_items()
    vectors = TextEmbedder(settings.cache_dir, settings.embedding_model).embed([item_text(i) for i in items])
    learner = Learner(None, cfg)
    learner.add_items([i["item_id"] for i in items], vectors)
    feedback = None
    if settings.serve_feedback_weight > 0:
        feedback = FeedbackModel.from_settings(ItemEmbeddings([i["item_id"] for i in items], vectors), settings)
    session = None
    if feedback is not None and settings.serve_feedback_source == "session":
        session = SessionJoin(settings.reward_click, settings.reward_purchase)
    learned = InProcessLearned(learner, rules, settings, args.publish_every, args.seed, feedback, args.lag, session,
                               args.warmup_events)
    sim.use_policy(learned)
    if args.drift_at:
        learned.same_request = SameRequestBreakdown(sim, max(0, args.drift_at[0] - 24_000),
                                           (settings.reward_click, settings.reward_purchase))
    if args.informed:
        learned.informed = InformedSlates(sim, args.informed, args.informed_from,
                                          (settings.reward_click, settings.reward_purchase))

    arms = {"learned": sim}
    for arm in [a for a in args.arms.split(",") if a]:
        arms[arm] = Simulator(sim_cfg)
        arms[arm].use_policy(arm_policy(arm, arms[arm], settings))
    weights = settings.reward_weights
    t0 = time.monotonic()
    for arm, s in arms.items():
        rec = CurveRecorder(curves, arm, weights)
        if arm == "learned":   # the demo's same-request figures (around the drift)
            s.on_slate = SameRequest.around_drift(s, rec, weights)
        for n, ev in enumerate(s.events(args.events), 1):
            rec.learn_one(ev)
            if n % 25_000 == 0:
                extra = f" updates {learner.train_step} versions {learned.version}" if arm == "learned" else ""
                print(f"[{arm}] {n}/{args.events} events, {time.monotonic() - t0:.0f}s{extra}", file=sys.stderr)
        rec.flush()

    data = load_curves(curves)
    summary = summarize(data)
    for d in args.drift_at[:1]:
        summary.update(drift_recovery(data, d))
    print(markdown_table(summary), file=sys.stderr)
    a = summary["arms"]
    fig = {"reward_vs_oracle": summary.get("reward_vs_oracle"), "reward_vs_popularity": summary.get("reward_vs_popularity"),
           "learned": a["learned"]["reward_per_view_tail"], "oracle": a.get("oracle", {}).get("reward_per_view_tail"),
           "popularity": a.get("popularity", {}).get("reward_per_view_tail"), "updates": learner.train_step,
           "events": args.events}
    if args.drift_at:
        fig["drift_recovery_ratio"] = summary.get("drift_recovery_ratio")
        learned.same_request.report(args.drift_at[0], args.events)
        fig.update({k: summary.get(k) for k in ("same_request_pre", "same_request_post", "same_request_recovery")})
        for arm, ratio in (summary.get("drift_recovery_by_arm") or {}).items():
            if arm != "learned":  # the baselines' own after/before ratio: the yardstick
                fig[f"drift_recovery_{arm}"] = ratio
    print(f"curves: {curves} ({time.monotonic() - t0:.0f}s)", file=sys.stderr)
    print("learning " + " ".join(f"{k}={v}" for k, v in fig.items()))


if __name__ == "__main__":
    main()
