"""The contracts other parts rely on: events, transitions, dead letters.

Events (JSON value, key = user_id) are parsed and validated by :func:`parse_event`, which is the
processor's hot path. Every violation raises :class:`~streamrl.errors.InvalidEvent` with a
machine-readable ``reason`` from :data:`INVALID_REASONS`.

Transitions travel on topic ``transitions`` as batches, one Kafka message per source partition
and commit: ``{"v": 1, "transitions": [<transition>, ...]}``; see :func:`transition_record`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

import orjson

from streamrl.errors import InvalidEvent

EVENT_TYPES = ("view", "click", "purchase")
TRANSITION_VERSION = 1

#: field -> (required, accepted Python types)
EVENT_FIELDS: dict[str, tuple[bool, tuple[type, ...]]] = {
    "event_id": (True, (str,)),
    "type": (True, (str,)),
    "user_id": (True, (str,)),
    "item_id": (True, (str,)),
    "ts": (True, (int,)),
    "request_id": (False, (str,)),
    "position": (False, (int,)),
    "propensity": (False, (float, int)),
    "policy_version": (False, (int,)),
    "value": (False, (float, int)),
}
_ID_FIELDS = ("event_id", "user_id", "item_id", "request_id")

#: Every reason a record can be dead-lettered for (bounded: safe as a metric label).
INVALID_REASONS: tuple[str, ...] = (
    "empty_value", "too_large", "not_utf8", "not_json", "non_finite", "not_object",
    *(f"missing_field:{f}" for f, (req, _) in EVENT_FIELDS.items() if req),
    *(f"wrong_type:{f}" for f in EVENT_FIELDS),
    "unknown_type", "type_topic_mismatch", "ts_negative", "ts_future",
    *(f"id_too_long:{f}" for f in _ID_FIELDS), "empty_id",
    "propensity_out_of_range", "position_negative", "policy_version_negative", "value_negative",
    "key_mismatch",
)


@dataclass(slots=True)
class Event:
    """One validated view, click or purchase."""

    event_id: str
    type: str
    user_id: str
    item_id: str
    ts: int
    request_id: str | None = None
    position: int | None = None
    propensity: float | None = None
    policy_version: int | None = None
    value: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {"event_id": self.event_id, "type": self.type, "user_id": self.user_id,
             "item_id": self.item_id, "ts": self.ts}
        for k in ("request_id", "position", "propensity", "policy_version", "value"):
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        return d

    def to_json(self) -> bytes:
        """The record's value: compact JSON (orjson). A non-finite float is written as the stdlib
        writes it (``NaN``, not JSON), so a consumer dead-letters it (``non_finite``) rather than
        read orjson's ``null`` as a missing field.

        >>> Event("e1", "view", "u1", "i1", 5, propensity=0.5).to_json()
        b'{"event_id":"e1","type":"view","user_id":"u1","item_id":"i1","ts":5,"propensity":0.5}'
        >>> Event("e1", "purchase", "u1", "i1", 5, value=float("nan")).to_json()[-12:]
        b'"value":NaN}'
        """
        d = self.to_dict()
        for k in ("propensity", "value"):
            v = d.get(k)
            if v is not None and not math.isfinite(v):
                return json.dumps(d, separators=(",", ":")).encode()
        return orjson.dumps(d)


def _reject_constant(name: str) -> Any:
    raise InvalidEvent("non_finite", f"{name} is not a finite number")


_decoder = json.JSONDecoder(parse_constant=_reject_constant)


def _slow_decode(value: bytes) -> Any:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidEvent("not_utf8", str(e)) from None
    try:
        return _decoder.decode(text)
    except InvalidEvent:
        raise
    except (ValueError, RecursionError) as e:
        raise InvalidEvent("not_json", str(e)[:200]) from None


def parse_event(value: bytes | None, topic_type: str | None = None, key: bytes | None = None, *,
                now_ms: int | None = None, max_bytes: int = 64 * 1024, max_id_bytes: int = 256,
                max_future_ms: int = 24 * 3600 * 1000, check_key: bool = True) -> Event:
    """Parse and validate one record value against the event contract.

    ``topic_type`` is the event type of the topic it arrived on (None: any type); ``key`` the
    message key, which must equal ``user_id`` when ``check_key`` is set.

    >>> parse_event(b'{"event_id":"e1","type":"view","user_id":"u","item_id":"i","ts":5}',
    ...             "view", b"u").item_id
    'i'
    >>> parse_event(b'{"event_id":"e1","type":"view"}', "view")
    Traceback (most recent call last):
    streamrl.errors.InvalidEvent: missing_field:user_id
    """
    if not value:
        raise InvalidEvent("empty_value")
    if len(value) > max_bytes:
        raise InvalidEvent("too_large", f"{len(value)} bytes > {max_bytes}")
    try:
        obj = orjson.loads(value)  # fast path; strict JSON only
    except orjson.JSONDecodeError:
        obj = _slow_decode(value)  # tells not_utf8 / non_finite / not_json apart
    if type(obj) is not dict:
        raise InvalidEvent("not_object", type(obj).__name__)

    for name, (required, types) in EVENT_FIELDS.items():
        v = obj.get(name)
        if v is None:
            if required:
                raise InvalidEvent(f"missing_field:{name}")
            continue
        if type(v) not in types:  # exact type: rejects bool where an int is expected
            raise InvalidEvent(f"wrong_type:{name}", type(v).__name__)

    etype = obj["type"]
    if etype not in EVENT_TYPES:
        raise InvalidEvent("unknown_type", etype[:64])
    if topic_type is not None and etype != topic_type:
        raise InvalidEvent("type_topic_mismatch", f"{etype} on {topic_type} topic")
    for name in _ID_FIELDS:
        v = obj.get(name)
        if v is not None:
            if len(v) * 4 > max_id_bytes and len(v.encode()) > max_id_bytes:
                raise InvalidEvent(f"id_too_long:{name}", f"{len(v.encode())} bytes")
            if not v:
                raise InvalidEvent("empty_id", name)
    ts = obj["ts"]
    if ts < 0:
        raise InvalidEvent("ts_negative", str(ts))
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if ts > now + max_future_ms:
        raise InvalidEvent("ts_future", f"{ts} > now + {max_future_ms} ms")
    prop = obj.get("propensity")
    if prop is not None:
        if not math.isfinite(prop):
            raise InvalidEvent("non_finite", "propensity")
        if not 0.0 < prop <= 1.0:
            raise InvalidEvent("propensity_out_of_range", str(prop))
    pos = obj.get("position")
    if pos is not None and pos < 0:
        raise InvalidEvent("position_negative", str(pos))
    pv = obj.get("policy_version")
    if pv is not None and pv < 0:
        raise InvalidEvent("policy_version_negative", str(pv))
    val = obj.get("value")
    if val is not None:
        if not math.isfinite(val):
            raise InvalidEvent("non_finite", "value")
        if val < 0:
            raise InvalidEvent("value_negative", str(val))
    user_id = obj["user_id"]
    if check_key and (key is None or key != user_id.encode()):
        raise InvalidEvent("key_mismatch", "message key differs from user_id")
    return Event(obj["event_id"], etype, user_id, obj["item_id"], ts, obj.get("request_id"), pos,
                 None if prop is None else float(prop), pv, None if val is None else float(val))


# --- transitions ------------------------------------------------------------------------------

def transition_record(*, tid: str, user_id: str, state: list[str], action: str, reward: float,
                      next_state: list[str], ts: int, propensity: float | None,
                      policy_version: int | None, request_id: str | None, position: int | None,
                      engagement: str | None) -> dict[str, Any]:
    """One transition as it travels on topic ``transitions``.

    ``state`` is the user's engaged-item history (oldest first, at most ``history_len``) strictly
    before the view; ``next_state`` is ``state`` plus the action when the view was rewarded.
    ``engagement`` is the strongest engagement joined to the view (None: no reward).
    """
    return {"id": tid, "user_id": user_id, "state": state, "action": action, "reward": reward,
            "next_state": next_state, "ts": ts, "propensity": propensity,
            "policy_version": policy_version, "request_id": request_id, "position": position,
            "engagement": engagement}


def encode_transitions(batch: list[dict[str, Any]]) -> bytes:
    """A ``transitions`` message: compact JSON (orjson: a tenth of the json module's time per
    transition, which the processor pays for every view)."""
    return orjson.dumps({"v": TRANSITION_VERSION, "transitions": batch})


def decode_transitions(value: bytes) -> list[dict[str, Any]]:
    """Inverse of :func:`encode_transitions`; rejects unknown versions (and what is not JSON: a
    ``ValueError``)."""
    obj = orjson.loads(value)
    if obj.get("v") != TRANSITION_VERSION:
        raise ValueError(f"unknown transitions version {obj.get('v')!r}")
    return obj["transitions"]


# --- dead letters ------------------------------------------------------------------------------

def dlq_headers(reason: str, detail: str, topic: str, partition: int, offset: int) -> list[tuple[str, bytes]]:
    """Headers of a dead-lettered record; its key and value are the original bytes."""
    return [("streamrl.reason", reason.encode()), ("streamrl.detail", detail[:500].encode()),
            ("streamrl.source.topic", topic.encode()),
            ("streamrl.source.partition", str(partition).encode()),
            ("streamrl.source.offset", str(offset).encode())]
