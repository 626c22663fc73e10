"""Failures of the ranking service; the HTTP edge turns them into status codes."""

from __future__ import annotations

from streamrl.errors import StreamrlError


class NotReady(StreamrlError):
    """No verified policy is loaded yet (HTTP 503)."""


class BadRankRequest(StreamrlError):
    """A request that passed the schema but cannot be ranked (HTTP 400)."""
