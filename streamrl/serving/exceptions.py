"""Failures of the ranking service; the HTTP edge turns them into status codes."""

from __future__ import annotations

from streamrl.errors import StreamrlError


class NotReady(StreamrlError):
    """No verified policy is loaded yet (HTTP 503)."""


class BadRankRequest(StreamrlError):
    """A request that passed the schema but cannot be ranked (HTTP 400)."""


class InvalidCandidates(StreamrlError):
    """A candidate id breaks the schema (not a string, empty, or too long); found while ranking a
    request that skipped the per-item schema pass. The edge validates the body with the schema
    for the error message (HTTP 422)."""
