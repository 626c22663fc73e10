"""The ranker's fast feedback layer: it learns from transitions, turns round after a drift, skips
bad records, and its child process learns from the real ``transitions`` topic."""

from __future__ import annotations

import logging
import time

import numpy as np

from streamrl.catalog import ItemEmbeddings
from streamrl.kafka import make_producer
from streamrl.schema import encode_transitions
from streamrl.serving import feedback, feedback_model, session
from streamrl.serving.feedback import FeedbackLayer
from streamrl.serving.feedback_model import FeedbackModel

GROUPS = 4


def _catalog(per_group: int = 25, seed: int = 0) -> ItemEmbeddings:
    """Items in GROUPS text clusters (like the simulator's topics): ``g<k>-<n>``."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((GROUPS, 384))
    ids, rows = [], []
    for k in range(GROUPS):
        for n in range(per_group):
            ids.append(f"g{k}-{n}")
            rows.append(centres[k] + 0.3 * rng.standard_normal(384))
    return ItemEmbeddings(ids, np.array(rows, dtype=np.float32))


def _transitions(rng, likes: dict[int, int], n: int, per_group: int = 25, served: float = 0.0,
                 shows: dict[int, int] | None = None) -> list[dict]:
    """Users whose history is group ``h`` engage (60%) with items of ``likes[h]``, else 2%; a
    share ``served`` of the views shows items of group ``shows[h]`` (default their own group: a
    policy that learned the world before it drifted), the rest of a random group."""
    out = []
    for _ in range(n):
        h = int(rng.integers(GROUPS))
        a = (shows or {}).get(h, h) if rng.random() < served else int(rng.integers(GROUPS))
        state = [f"g{h}-{int(i)}" for i in rng.integers(per_group, size=5)]
        engaged = rng.random() < (0.6 if a == likes[h] else 0.02)
        out.append({"state": state, "action": f"g{a}-{int(rng.integers(per_group))}", "reward": float(engaged),
                    "position": int(rng.integers(10))})
    return out


def _preferred(model: FeedbackModel | FeedbackLayer, h: int) -> int:
    """The group whose items get the largest correction for a user with a group-``h`` history."""
    cands = [f"g{k}-{n}" for k in range(GROUPS) for n in range(25)]
    corr = model.correction([f"g{h}-{n}" for n in range(5)], cands)
    return int(np.argmax(corr.reshape(GROUPS, 25).mean(1)))


def test_it_learns_who_engages_with_what_and_turns_round_after_a_drift():
    model = FeedbackModel(_catalog(), dim=8)
    rng = np.random.default_rng(1)
    assert model.correction(["g0-1"], ["g1-1", "g2-2"]).tolist() == [0.0, 0.0]   # nothing learned yet
    same = {h: h for h in range(GROUPS)}
    assert model.update(_transitions(rng, same, 4000)) == 4000
    assert [_preferred(model, h) for h in range(GROUPS)] == [0, 1, 2, 3]
    rotated = {h: (h + 1) % GROUPS for h in range(GROUPS)}                      # an interest drift
    model.update(_transitions(rng, rotated, 3000))
    assert [_preferred(model, h) for h in range(GROUPS)] == [1, 2, 3, 0]


def test_with_hold_it_learns_only_after_engagement_falls_and_stops_after_hold():
    model = FeedbackModel(_catalog(), dim=8, hold=6000)
    rng = np.random.default_rng(4)
    model.update(_transitions(rng, {h: h for h in range(GROUPS)}, 12000, served=0.7))  # a steady world
    assert model.drifts == 0 and not model.D.any()                                    # nothing to correct
    rotated = {h: (h + 1) % GROUPS for h in range(GROUPS)}
    model.update(_transitions(rng, rotated, 3000, served=0.7))                        # engagement falls
    assert model.drifts == 1 and [_preferred(model, h) for h in range(GROUPS)] == [1, 2, 3, 0]
    model.update(_transitions(rng, rotated, 5000, served=0.7))                        # the hold runs out
    assert model.drifts == 1 and not model.D.any()


def _until_fall(model: FeedbackModel, rng, likes: dict[int, int], step: int = 50) -> None:
    """Feed ``likes`` transitions in small batches until the layer detects a fall."""
    drifts = model.drifts
    while model.drifts == drifts:
        model.update(_transitions(rng, likes, step, served=0.7))
        assert model.seen < 100_000


def test_a_fresh_matrix_starts_with_what_happened_since_the_fall_began(caplog):
    """The detector fires 1-2k transitions into a fall; D does not wait for as many more."""
    model = FeedbackModel(_catalog(), dim=8, hold=50_000)
    rng = np.random.default_rng(7)
    model.update(_transitions(rng, {h: h for h in range(GROUPS)}, 12000, served=0.7))   # a steady world
    rotated = {h: (h + 1) % GROUPS for h in range(GROUPS)}
    with caplog.at_level(logging.INFO, logger="streamrl.serving.feedback_model"):
        _until_fall(model, rng, rotated)
    assert model.seen - 12000 > 500                      # the fall took a while to be sure of ...
    fall = [r.getMessage() for r in caplog.records if "(drift 1)" in r.getMessage()]
    backlog = int(fall[0].split("learns from zero (")[1].split()[0])
    assert 0.5 * (model.seen - 12000) < backlog <= model.seen - 12000 + 200   # ~ the transitions since it began
    assert [_preferred(model, h) for h in range(GROUPS)] == [1, 2, 3, 0]          # ... and D knows it already


def test_after_a_fall_each_transition_also_replays_ones_since_the_fall(monkeypatch):
    """The replays are extra steps on the transitions since the fall (the matrix moves further
    from zero) toward the same mapping. (Whether they pay is a question for the closed loop, not
    for this toy: here the turn after 300 transitions came out 0.87-1.15x without them, by seed;
    in-process see README.)"""
    def run(steps: int) -> FeedbackModel:
        monkeypatch.setattr(feedback_model, "REPLAY_STEPS", steps)
        model = FeedbackModel(_catalog(), dim=8, hold=50_000)
        rng = np.random.default_rng(8)
        model.update(_transitions(rng, {h: h for h in range(GROUPS)}, 12000, served=0.7))
        _until_fall(model, rng, rotated)
        model.update(_transitions(rng, rotated, 300, served=0.7))
        return model

    rotated = {h: (h + 1) % GROUPS for h in range(GROUPS)}
    steps = feedback_model.REPLAY_STEPS
    plain, replayed = run(0), run(steps)
    assert len(replayed._fallen) == len(plain._fallen) > 1000                 # the backlog and the 300
    assert np.linalg.norm(replayed.D) > 1.03 * np.linalg.norm(plain.D)       # 4.40 against 4.18 (seeded)
    assert [_preferred(m, h) for m in (plain, replayed) for h in range(GROUPS)] == [1, 2, 3, 0] * 2


def _timed(rng, n: int, t0: int, after: bool, caught_up: float = 0.0) -> list[dict]:
    """``n`` views from event time ``t0`` (a second apart) with their history's times. Before the
    drift (``after`` False) users with a group-``h`` history engage with group ``h``; after it with
    ``h + 1``, and a share ``caught_up`` of them already engaged with three ``h + 1`` items since
    (their history: two old group-``h`` items, then those), whom the old mapping serves right."""
    out = []
    for k in range(n):
        t = t0 + 1000 * k
        h = int(rng.integers(GROUPS))
        want = (h + 1) % GROUPS if after else h
        if after and rng.random() < caught_up:
            state = [f"g{h}-{int(i)}" for i in rng.integers(25, size=2)] + [f"g{want}-{int(i)}" for i in rng.integers(25, size=3)]
            times = [t0 - 500_000, t0 - 400_000] + [t - 3000, t - 2000, t - 1000]
        else:
            state = [f"g{h}-{int(i)}" for i in rng.integers(25, size=5)]
            times = [t0 - 100_000 * (5 - i) for i in range(5)] if after else [t - 2000 * (5 - i) for i in range(5)]
        a = want if rng.random() < 0.7 and not after else int(rng.integers(GROUPS))
        engaged = rng.random() < (0.6 if a == want else 0.02)
        out.append({"state": state, "state_ts": times, "action": f"g{a}-{int(rng.integers(25))}",
                    "reward": float(engaged), "position": int(rng.integers(10))})
    return out


def test_after_a_fall_items_engaged_since_it_began_have_their_own_half_of_the_context(caplog):
    """After a drift a user with an old group-h history wants h + 1, and so does one whose history
    caught up (h + 1 items engaged since), whom the policy reads right: in one context space the
    matrix had to map h + 1 histories both to h + 2 (old users of h + 1) and to h + 1 (caught-up users
    of h). With the history's event times, items engaged since the fall began (the event clock at
    the change point) are the context's second half and each half learns its own mapping."""
    def run(with_times: bool) -> FeedbackModel:
        model = FeedbackModel(_catalog(), dim=8, hold=50_000)
        rng = np.random.default_rng(3)
        views = _timed(rng, 12000, 10 ** 9, after=False)
        drift = 10 ** 9 + 1000 * 12000
        views += _timed(rng, 6000, drift, after=True, caught_up=0.5)
        if not with_times:
            for v in views:
                del v["state_ts"]
        with caplog.at_level(logging.INFO, logger="streamrl.serving.feedback_model"):
            model.update(views)
        assert model.drifts == 1
        return model

    cands = [f"g{k}-{n}" for k in range(GROUPS) for n in range(25)]
    group = lambda corr: int(np.argmax(corr.reshape(GROUPS, 25).mean(1)))
    old = lambda m, h: group(m.correction([f"g{h}-{n}" for n in range(5)], cands, [0] * 5))
    late = 10 ** 9 + 1000 * 17_999
    def caught_up(m: FeedbackModel) -> float:
        """The smallest margin, over the groups, of a caught-up user's group over the next best."""
        out = []
        for h in range(GROUPS):
            want = (h + 1) % GROUPS
            corr = m.correction([f"g{h}-1", f"g{h}-2"] + [f"g{want}-{n}" for n in range(3)], cands,
                                [0, 0, late, late, late]).reshape(GROUPS, 25).mean(1)
            out.append(corr[want] - max(corr[k] for k in range(GROUPS) if k != want))
        return min(out)

    split = run(True)
    drift = 10 ** 9 + 1000 * 12000
    assert drift - 20_000 <= split.split_ts <= drift + 200_000           # the clock where the fall began
    assert [old(split, h) for h in range(GROUPS)] == [1, 2, 3, 0]
    plain = run(False)                                                    # one context space
    assert plain.split_ts is None and not plain.D[8:].any()
    assert [old(plain, h) for h in range(GROUPS)] == [1, 2, 3, 0]
    # caught-up users: right by a wide margin in every group with the halves; in one space a blend
    # (seeds 3-8: 41-60 against -7.5-9.4)
    assert caught_up(split) > 20 and caught_up(plain) < caught_up(split) / 3


def test_a_weaker_policy_version_is_not_a_drift():
    """Engagement down by a third (a new policy version ranks worse) is not an interest drift:
    at a fall of a fifth, demo runs had 1-3 such false alarms before their drift."""
    model = FeedbackModel(_catalog(), dim=8, hold=50_000)
    rng = np.random.default_rng(9)
    same = {h: h for h in range(GROUPS)}
    model.update(_transitions(rng, same, 12000, served=0.7))
    model.update(_transitions(rng, same, 6000, served=0.3))          # ~0.47 -> ~0.30 engaged
    assert model.drifts == 0 and not model.D.any()
    model.update(_transitions(rng, {h: (h + 1) % GROUPS for h in range(GROUPS)}, 3000, served=0.3))
    assert model.drifts == 1                                          # a drift still is


def test_a_smaller_fall_is_flagged_against_the_rate_before_it():
    """Two users in three move (engagement ~0.47 -> ~0.2, a fall of ~56%): the long-run rate of
    every view comes down with the recent one and never sees 40% between them (this was never
    flagged); against the rate of the views before the last ~2k, which the fall has not pulled
    down yet, it is, once it has lasted PERSIST transitions."""
    model = FeedbackModel(_catalog(), dim=8, hold=50_000)
    rng = np.random.default_rng(1)
    same, rotated = {h: h for h in range(GROUPS)}, {h: (h + 1) % GROUPS for h in range(GROUPS)}
    model.update(_transitions(rng, same, 12000, served=0.7))
    for _ in range(80):
        n = int(rng.binomial(100, 0.65))
        batch = _transitions(rng, rotated, n, served=0.7) + _transitions(rng, same, 100 - n, served=0.7)
        model.update([batch[i] for i in rng.permutation(100)])
        if model.drifts:
            break
    assert model.drifts == 1 and model.seen - 12000 <= 5000                 # 3.7k (seeded)


def _rate_stream(model: FeedbackModel, rates: list[tuple[float, int]], seed: int, to_end: bool = False) -> int | None:
    """Feed ``model`` views engaged with probability ``rate`` for ``n`` views each, in turn (to the
    end, or until a fall is flagged); the views after the first phase when one first was (None: never)."""
    rng = np.random.default_rng(seed)
    engaged = np.concatenate([rng.random(n) < rate for rate, n in rates])
    flagged = None
    for k in range(0, len(engaged), 500):
        model.update([{"action": "none", "state": [], "reward": float(e), "position": 0} for e in engaged[k:k + 500]])
        if model.drifts and flagged is None:
            flagged = model.seen - rates[0][1]
            if not to_end:
                break
    return flagged


def test_a_fall_at_a_demos_engagement_rate_is_flagged_and_a_steady_rate_is_not():
    """A demo drift took the learned arm's engagement from ~8.3% to ~3.5% (a fall of 58%); the
    earlier views' rate, followed as the fall went on, came down with the recent one and the
    layer never flagged it (once in a demo run; in 1 of 10 seeded streams here, and a 52% fall
    in 5 of 10). Held while the recent rate slides, it flags every one."""
    for seed in range(6):
        after = _rate_stream(FeedbackModel(_catalog(), dim=8, hold=50_000), [(0.083, 40_000), (0.035, 30_000)], seed)
        assert after is not None and 0 < after <= 8000, (seed, after)
        after = _rate_stream(FeedbackModel(_catalog(), dim=8, hold=50_000), [(0.083, 40_000), (0.04, 30_000)], seed)
        assert after is not None and 0 < after <= 10_000, (seed, after)
        steady = FeedbackModel(_catalog(), dim=8, hold=50_000)
        assert _rate_stream(steady, [(0.08, 20_000), (0.08, 100_000)], seed) is None and steady.drifts == 0


def test_a_fall_that_lasts_is_flagged_once():
    """Engagement that stays down after a fall: the detector used to re-arm as soon as the recent
    rate touched 0.9 of the long-run one (which the fall pulls down), while the recent rate was still
    below FALL_SHARE of the held reference, and flagged the same fall again a few views later,
    61-880 times over 30k views in ten such seeded streams (each a log line, and 30k views after D started, a restart
    from zero). It re-arms once the rate is back."""
    for seed in range(4):
        model = FeedbackModel(_catalog(), dim=8, hold=50_000)
        assert _rate_stream(model, [(0.083, 40_000), (0.04, 30_000)], seed, to_end=True) is not None
        assert model.drifts == 1, (seed, model.drifts)


def test_it_ranks_by_what_an_engagement_is_worth_not_by_clicks():
    """Group-0 users click group 1 often and never buy; they click group 2 half as often, and each
    such click is a purchase (reward 5): the correction prefers group 2 (a click model: group 1)."""
    model = FeedbackModel(_catalog(), dim=8)
    rng = np.random.default_rng(6)
    out = []
    for _ in range(6000):
        a = int(rng.integers(GROUPS))
        p = {1: 0.4, 2: 0.2}.get(a, 0.02)
        reward = (5.0 if a == 2 else 1.0) if rng.random() < p else 0.0
        out.append({"state": [f"g0-{int(i)}" for i in rng.integers(25, size=5)],
                    "action": f"g{a}-{int(rng.integers(25))}", "reward": reward, "position": 0})
    model.update(out)
    assert _preferred(model, 0) == 2


def test_a_fall_long_after_the_matrix_started_starts_it_over(caplog):
    """A drift after a false alarm: the first fall's dip set the lowest rate, so the second fall
    (no lower) used to keep the old matrix; long after the first it is news and D starts over."""
    model = FeedbackModel(_catalog(), dim=8, hold=200_000)
    rng = np.random.default_rng(5)
    model.update(_transitions(rng, {h: h for h in range(GROUPS)}, 12000, served=0.7))   # a steady world
    one = {h: (h + 1) % GROUPS for h in range(GROUPS)}
    model.update(_transitions(rng, one, 3000, served=0.7))                               # fall 1
    assert model.drifts == 1
    model.update(_transitions(rng, one, 40_000, served=0.7, shows=one))                  # the policy caught up
    two = {h: (h + 2) % GROUPS for h in range(GROUPS)}
    with caplog.at_level(logging.INFO, logger="streamrl.serving.feedback_model"):
        while model.drifts == 1:                                                          # fall 2, 43k later
            model.update(_transitions(rng, two, 100, served=0.7, shows=one))
            assert model.seen < 60_000
    fall = [r.getMessage() for r in caplog.records if "(drift 2)" in r.getMessage()]
    assert len(fall) == 1 and "D learns from zero" in fall[0]                             # not the old matrix
    model.update(_transitions(rng, two, 3000, served=0.7, shows=one))
    assert [_preferred(model, h) for h in range(GROUPS)] == [2, 3, 0, 1]


def test_bad_transitions_are_skipped_and_the_rest_applied():
    model = FeedbackModel(_catalog(), dim=8)
    good = _transitions(np.random.default_rng(2), {h: h for h in range(GROUPS)}, 10)
    bad = [None, "x", {"state": "g0-1", "action": ["g1-1"]}, {"state": ["nope"], "action": "g1-1", "reward": 1},
           {"state": ["g0-1"], "action": "g1-1", "reward": "lots"}, {"state": ["g0-1"], "action": "unknown"}]
    assert model.update(bad + good) == 12            # 10 + 2 with unknown items (they feed the intercepts)
    assert np.isfinite(model.D).all() and model.updates == 10
    assert model.correction(None, ["g0-1"]) is None and model.correction(["unknown"], ["g0-1"]) is None
    assert model.correction(["g0-1"], ["g0-2", "unknown"])[1] == 0.0


def test_the_child_learns_from_the_transitions_topic(settings):
    s = settings.replace(serve_feedback_dim=8, serve_feedback_hold=0)            # always on: no drift here
    layer = FeedbackLayer(s, _catalog())
    try:
        time.sleep(2.0)                                   # the child is at the topic's end
        assert layer.correction(["g0-1"], ["g0-2"]) is None   # a zero matrix: no correction to build
        producer = make_producer(s)
        topic = s.topic("transitions")
        producer.send(topic, value=b"not json", partition=0)
        rng = np.random.default_rng(3)
        for _ in range(4):
            producer.send(topic, value=encode_transitions(_transitions(rng, {h: h for h in range(GROUPS)}, 1000)),
                          partition=1)
        producer.flush()
        producer.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and layer.describe()["transitions"] < 4000:
            time.sleep(0.2)
        info = layer.describe()
        assert info["transitions"] == 4000 and info["learning"] and info["norm"] > 0
        assert [_preferred(layer, h) for h in range(GROUPS)] == [0, 1, 2, 3]
        layer.sync_metrics()
        from streamrl import metrics as M
        assert M.SERVING_FEEDBACK.labels("malformed")._value.get() >= 1
    finally:
        layer.close()
    assert layer._proc.poll() is not None and not layer.dir.exists()



# --- the session source: the ranker joins slates to the next request's ``recent`` ----------------

def test_a_session_join_reads_clicks_purchases_and_skips_from_the_next_request():
    j = session.SessionJoin(reward_click=1.0, reward_purchase=5.0, pending=2, max_users=2)
    assert j.outcomes("u", ["a"]) == []                        # nothing served yet
    j.served("u", ["a"], ["x", "y", "z"], ["a"], [1.5, 0.5, -0.25])           # with the policy's scores
    assert j.outcomes("u", ["a", "y", "z", "z"]) == [(["a"], ["x", "y", "z"], [0.0, 1.0, 5.0], [0, 1, 2],
                                                      [1.5, 0.5, -0.25])]
    assert j.outcomes("u", ["a", "y", "z", "z"]) == []        # a slate is joined once
    # y was clicked: its purchase, reported within the next 2 requests, adds the difference
    j.served("u", ["a", "y"], ["w"], ["a", "y", "z", "z"])
    assert j.outcomes("u", ["y", "z", "z"]) == [(["a", "y"], ["w"], [0.0], [0], [0.0])]   # "a" aged out: no gain
    j.served("u", ["y"], ["v"], ["y", "z", "z"])
    # the purchase's view carries the score y was served with
    assert j.outcomes("u", ["y", "z", "z", "y"]) == [(["a"], ["y"], [4.0], [1], [0.5]), (["y"], ["v"], [0.0], [0], [0.0])]
    # a click's purchase is looked for in the next `pending` requests only
    j.served("u", ["y"], ["q"], ["q"])
    for recent in (["q", "r"], ["q", "r"]):
        assert j.outcomes("u", recent)[-1][2] in ([1.0], [0.0])
        j.served("u", ["y"], ["r"], recent)
    assert [r[2] for r in j.outcomes("u", ["q", "r", "q"])] == [[0.0]]   # q's purchase came too late
    # a request without ``recent`` reports no engagement; the least recently served user goes first
    j.served("u", [], ["x"], None)
    assert j.outcomes("u", None) == [([], ["x"], [0.0], [0], [0.0])]
    for u in ("u1", "u2", "u3"):
        j.served(u, [], ["x"], None)
    assert len(j) == 2 and j.outcomes("u1", ["x"]) == []


def test_bad_slate_records_become_records_the_model_skips():
    model = FeedbackModel(_catalog(), dim=8)
    views = session.joined_views([(["g0-1"], ["g1-1", "g1-2"], [1.0, 0.0], [0, 1]), "junk", (1, 2),
                                   (["g0-1"], ["g1-1"], [1.0, 0.0], [0]), (["g0-1"], "g1-1", [1.0], [0])])
    assert len(views) == 6 and views[2:] == [None, None, None, None]
    assert model.update(views) == 2
    scored = session.joined_views([(["g0-1"], ["g1-1"], [1.0], [0], [0.5]), (["g0-1"], ["g1-1"], [1.0], [0], [0.5, 1.0]),
                                    (["g0-1"], ["g1-1"], [1.0], [0], "0.5")])
    assert scored[0]["score"] == 0.5 and scored[1:] == [None, None]
    bad = {"state": ["g0-1"], "action": "g1-1", "reward": 1.0, "position": 0}
    assert model.update([{**bad, "score": "x"}, {**bad, "score": float("nan")}]) == 1   # an unreadable score: skipped; NaN: 0
    assert np.isfinite(model.D).all()


def _drifted_views(rng, n: int, per_group: int = 25) -> list[dict]:
    """After a drift: users with a group-h history engage with group h+1 (60%, else 2%), while the
    policy still scores their old group highest (+3, the others -1: centred); it serves that
    group half of the time and a random one otherwise."""
    out = []
    for _ in range(n):
        h = int(rng.integers(GROUPS))
        a = h if rng.random() < 0.5 else int(rng.integers(GROUPS))
        engaged = rng.random() < (0.6 if a == (h + 1) % GROUPS else 0.02)
        out.append({"state": [f"g{h}-{int(i)}" for i in rng.integers(per_group, size=5)],
                    "action": f"g{a}-{int(rng.integers(per_group))}", "reward": float(engaged),
                    "position": int(rng.integers(10)), "score": 3.0 if a == h else -1.0})
    return out


def test_the_layer_learns_what_the_policys_score_gets_wrong():
    """With the served score in its model the layer learns the residual: after a drift the
    ranking it corrects (policy score + correction) puts the new group first, and where the
    policy's score already explains engagement it learns less than a layer that ignores it."""
    model = FeedbackModel(_catalog(), dim=8)
    rng = np.random.default_rng(5)
    model.update(_drifted_views(rng, 8000))
    cands = [f"g{k}-{n}" for k in range(GROUPS) for n in range(25)]
    for h in range(GROUPS):
        policy = np.array([3.0 if k == h else -1.0 for k in range(GROUPS) for _ in range(25)])
        ranked = (policy + model.correction([f"g{h}-{n}" for n in range(5)], cands)).reshape(GROUPS, 25).mean(1)
        assert int(np.argmax(ranked)) == (h + 1) % GROUPS, (h, ranked)
    # a policy whose score does explain engagement leaves less to learn
    views = _drifted_views(np.random.default_rng(6), 8000)
    for v in views:
        h, a = int(v["state"][0][1]), int(v["action"][1])
        v["score"] = 60.0 if a == (h + 1) % GROUPS else -20.0     # +3 and -1 in logits at weight 20
    agree, blind = FeedbackModel(_catalog(), dim=8), FeedbackModel(_catalog(), dim=8)
    agree.update(views)
    blind.update([{**v, "score": 0.0} for v in views])
    assert np.linalg.norm(agree.D) < 0.5 * np.linalg.norm(blind.D)


def _slates(rng, likes: dict[int, int], n: int) -> list[tuple]:
    """:func:`_transitions` as the ranker's slate records (one view each)."""
    return [(t["state"], [t["action"]], [t["reward"]], [t["position"]]) for t in _transitions(rng, likes, n)]


def test_the_child_learns_from_the_rankers_session_joins(settings):
    import os
    import struct

    s = settings.replace(serve_feedback_dim=8, serve_feedback_hold=0, serve_feedback_source="session")
    layer = FeedbackLayer(s, _catalog())
    try:
        assert layer.session is not None and layer.describe()["source"] == "session"
        os.write(layer._fd, struct.pack("<I", 8) + b"not json")               # a malformed frame
        rng = np.random.default_rng(3)
        for _ in range(4):
            layer.send(_slates(rng, {h: h for h in range(GROUPS)}, 1000))
            time.sleep(feedback.SEND_EVERY_S)
        layer.send([])                                                          # the last ones go out
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and layer.describe()["transitions"] < 4000:
            time.sleep(0.2)
        info = layer.describe()
        assert info["transitions"] == 4000 and info["learning"] and info["norm"] > 0 and info["dropped"] == 0
        assert [_preferred(layer, h) for h in range(GROUPS)] == [0, 1, 2, 3]
        assert layer.shared[-1] == 1                                            # the malformed frame, counted
    finally:
        layer.close()
    assert layer._proc.poll() is not None and not layer.dir.exists()


def test_the_ranker_joins_each_users_slates_to_their_next_request(settings):
    from serving_snapshots import catalog_text, make_snapshot

    from streamrl.serving.ranker import Ranker

    s = settings.replace(serve_feedback_source="session", serve_exploration="greedy")
    layer = FeedbackLayer(s, catalog_text())
    ranker = Ranker(s, catalog_text(), None, None, seed=0, feedback=layer)
    try:
        assert ranker.offer(make_snapshot(1))
        first = ranker.rank("u1", ["i1", "i2", "i3", "i4"], 3)
        shown = [it["item_id"] for it in first["items"]]
        assert layer.describe()["session_users"] == 1
        scores = layer.session._last["u1"][4]      # the policy's scores of the served items, less the mean
        assert len(scores) == 3 and all(np.isfinite(scores)) and sum(scores) >= 0   # greedy: the top 3 of 4
        ranker.rank("u1", ["i5", "i6"], 2, recent=[shown[1]])     # the second item was clicked
        ranker.rank("u2", ["i5", "i6"], 2)                        # another user: nothing to join yet
        time.sleep(feedback.SEND_EVERY_S)
        ranker.rank("u2", ["i5", "i6"], 2)                        # joins u2's first slate; the batch goes out
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and layer.describe()["transitions"] < 5:
            time.sleep(0.1)
        assert layer.describe()["transitions"] == 5               # u1's 3 views and u2's 2
    finally:
        ranker.close()


def test_the_ranker_hands_the_layer_each_history_items_event_time(settings, tmp_path):
    """The store's history carries event times; the request's ``recent`` items not stored yet have
    none (None). The joined records carry them to the child (``state_ts``), whose event clock
    sets where a fall began."""
    from serving_snapshots import catalog_text, make_snapshot

    from streamrl.consumers.state import UserState
    from streamrl.consumers.store import open_store
    from streamrl.serving.ranker import Ranker

    s = settings.replace(serve_feedback_source="session", serve_exploration="greedy",
                         state_store=f"sqlite:///{tmp_path}/state.db")
    store = open_store(s.state_store, s.state_namespace)
    store.commit({}, {}, {"u1": UserState("u1", history=[(1000, "e1", "i3", "click"),
                                                         (2000, "e2", "i4", "purchase")]).encode(None)}, {})
    layer = FeedbackLayer(s, catalog_text())
    ranker = Ranker(s, catalog_text(), store, None, seed=0, feedback=layer)
    try:
        assert ranker.offer(make_snapshot(1))
        assert layer._split_ts() is None                                   # no fall: no split
        shown = [it["item_id"] for it in ranker.rank("u1", ["i1", "i2", "i5"], 2, recent=["i7"])["items"]]
        assert layer.session._last["u1"][0] == ["i3", "i4", "i7"] and layer.session._last["u1"][5] == [1000, 2000, None]
        joined = layer.session.outcomes("u1", ["i7", shown[0]])
        assert joined[0][5] == [1000, 2000, None]
        views = session.joined_views(joined)
        assert views[0]["state_ts"] == [1000, 2000, None] and views[0]["reward"] == 1.0
        model = FeedbackModel(catalog_text(), dim=4)
        model.update(views)
        assert model._clock == 2000.0                                      # the latest stored time seen
    finally:
        ranker.close()
        store.close()


def test_after_a_fall_a_user_with_nothing_since_it_gets_a_diverse_slate():
    """A policy that ranks one group's items first: before a fall, and for a user whose history
    has items since the fall began (or a recent item not stored yet), the scores are left alone;
    once the fall is flagged, a user whose history all predates it gets a top 5 spread over the
    groups (strength 0: off)."""
    model = FeedbackModel(_catalog(), dim=8, hold=50_000, diversity=3.0)
    cands = [f"g{k}-{n}" for k in range(GROUPS) for n in range(25)]
    rng = np.random.default_rng(4)
    scores = np.repeat([2.0, 1.0, 1.0, 1.0], 25) + 0.05 * rng.standard_normal(100)
    groups = lambda s: {int(j) // 25 for j in np.argsort(-s, kind="stable")[:5]}
    assert model.diversify(scores, cands, [0] * 5, 5) is scores                       # no fall: no split
    drift = 10 ** 9 + 1000 * 12000
    model.update(_timed(rng, 12000, 10 ** 9, after=False) + _timed(rng, 6000, drift, after=True))
    assert model.drifts == 1 and model.split_ts is not None
    stale = model.diversify(scores, cands, [0] * 5, 5)
    assert groups(scores) == {0} and groups(stale) == {0, 1, 2, 3}
    assert int(np.argmax(stale)) == int(np.argmax(scores))                           # the best item stays first
    late = 10 ** 9 + 1000 * 17_999
    assert model.diversify(scores, cands, [0, 0, late], 5) is scores                  # caught up: the policy's
    assert model.diversify(scores, cands, [0, 0, None], 5) is scores                  # a recent item, not stored
    model.diversity = 0.0
    assert model.diversify(scores, cands, [0] * 5, 5) is scores


def test_the_ranker_diversifies_the_slates_of_users_with_nothing_since_a_fall(settings, tmp_path):
    """Through the ranker and the layer's learning child: once the child has flagged a fall (from
    the session joins the ranker hands it), the slate of a user whose stored history predates the
    fall is diversified (counted in streamrl_serving_diversified_total); a request whose ``recent``
    has an item not stored yet (engaged since) is not."""
    from prometheus_client import REGISTRY
    from serving_snapshots import catalog_text, make_snapshot

    from streamrl.consumers.state import UserState
    from streamrl.consumers.store import open_store
    from streamrl.serving.ranker import Ranker

    s = settings.replace(serve_feedback_source="session", serve_exploration="greedy", serve_feedback_dim=8,
                         serve_feedback_hold=50_000, state_store=f"sqlite:///{tmp_path}/state.db")
    store = open_store(s.state_store, s.state_namespace)
    store.commit({}, {}, {"u1": UserState("u1", history=[(1000, "e1", "i3", "click"),
                                                         (2000, "e2", "i4", "purchase")]).encode(None)}, {})
    text = catalog_text()
    layer = FeedbackLayer(s, text)
    ranker = Ranker(s, text, store, None, seed=0, feedback=layer)
    counted = lambda: REGISTRY.get_sample_value("streamrl_serving_diversified_total") or 0.0
    cands = [f"i{k}" for k in range(20)]
    try:
        assert ranker.offer(make_snapshot(1))
        before = counted()
        ranker.rank("u1", cands, 5)
        assert counted() == before                                     # no fall: the layer is off
        rng = np.random.default_rng(0)
        t0 = 10 ** 9
        for chunk in range(18):                                        # engagement falls from 30% to 3%
            rate = 0.3 if chunk < 12 else 0.03
            slates = []
            for n in range(1000):
                t = t0 + 1000 * (1000 * chunk + n)
                state = [f"i{int(i)}" for i in rng.integers(20, size=5)]
                slates.append((state, [f"i{int(rng.integers(20))}"], [float(rng.random() < rate)],
                               [int(rng.integers(10))], [0.0], [t - 2000 * (5 - i) for i in range(5)]))
            layer.send(slates)
            time.sleep(feedback.SEND_EVERY_S * 2)
        layer.send([])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (layer._split_ts() is None or not layer._matrix().any()):
            time.sleep(0.1)
        assert layer._split_ts() is not None and layer._split_ts() > 2000 and layer.describe()["dropped"] == 0
        ranker.rank("u1", cands, 5)
        assert counted() == before + 1                                  # u1's history: all before the fall
        ranker.rank("u1", cands, 5, recent=["i9"])
        assert counted() == before + 1                                  # an item since: the policy's order
    finally:
        ranker.close()
        store.close()
