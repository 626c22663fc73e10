"""The event contract: every violation has its own machine-readable reason."""

import json

import pytest

from streamrl.errors import InvalidEvent
from streamrl.schema import INVALID_REASONS, parse_event

NOW = 1_800_000_000_000
GOOD = {"event_id": "e1", "type": "click", "user_id": "u1", "item_id": "i1", "ts": NOW - 1000,
        "request_id": "r", "position": 0, "propensity": 0.5, "policy_version": 2, "value": 3.5}


def enc(d):
    return json.dumps(d).encode()


def bad(**changes):
    d = dict(GOOD)
    for k, v in changes.items():
        if v is KeyError:
            d.pop(k)
        else:
            d[k] = v
    return enc(d)


CASES = {
    "not_utf8": (b"\xff\xfe{", b"u1"),
    "not_json": (b"{nope", b"u1"),
    "not_object": (b"[1, 2]", b"u1"),
    "empty_value": (b"", b"u1"),
    "too_large": (b"x" * (2 * 1024 * 1024), b"u1"),
    "non_finite": (enc(GOOD).replace(b"0.5", b"NaN"), b"u1"),
    "unknown_type": (bad(type="like"), b"u1"),
    "type_topic_mismatch": (bad(type="view"), b"u1"),
    "ts_negative": (bad(ts=-1), b"u1"),
    "ts_future": (bad(ts=NOW + 2 * 86_400_000), b"u1"),
    "propensity_out_of_range": (bad(propensity=0), b"u1"),
    "id_too_long:user_id": (bad(user_id="u" * 257), b"u" * 257),
    "id_too_long:item_id": (bad(item_id="i" * 257), b"u1"),
    "key_mismatch": (enc(GOOD), b"someone-else"),
    "position_negative": (bad(position=-1), b"u1"),
    "value_negative": (bad(value=-2), b"u1"),
}
for f in ("event_id", "type", "user_id", "item_id", "ts"):
    CASES[f"missing_field:{f}"] = (bad(**{f: KeyError}), b"u1")
WRONG = {"event_id": 1, "type": 2, "user_id": 3, "item_id": [], "ts": "now", "request_id": 5,
         "position": 1.5, "propensity": "high", "policy_version": True, "value": "9"}
for f, v in WRONG.items():
    CASES[f"wrong_type:{f}"] = (bad(**{f: v}), b"u1")


@pytest.mark.parametrize("reason", sorted(CASES))
def test_parse_rejects_with_distinct_reason(reason):
    value, key = CASES[reason]
    with pytest.raises(InvalidEvent) as ei:
        parse_event(value, "click", key, now_ms=NOW)
    assert ei.value.reason == reason
    assert reason in INVALID_REASONS


def test_parse_rejects_infinity_and_propensity_above_one():
    for raw in (enc(GOOD).replace(b"3.5", b"Infinity"), enc(GOOD).replace(b"3.5", b"-Infinity")):
        with pytest.raises(InvalidEvent, match="non_finite"):
            parse_event(raw, "click", b"u1", now_ms=NOW)
    with pytest.raises(InvalidEvent, match="propensity_out_of_range"):
        parse_event(bad(propensity=1.01), "click", b"u1", now_ms=NOW)


def test_parse_accepts_valid_and_optional_nulls():
    ev = parse_event(enc(GOOD), "click", b"u1", now_ms=NOW)
    assert ev.propensity == 0.5 and ev.value == 3.5
    minimal = {k: GOOD[k] for k in ("event_id", "type", "user_id", "item_id", "ts")}
    minimal["position"] = None
    ev = parse_event(enc(minimal), "click", b"u1", now_ms=NOW)
    assert ev.position is None
    assert parse_event(ev.to_json(), "click", b"u1", now_ms=NOW) == ev
