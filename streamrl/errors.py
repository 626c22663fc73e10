"""The root exception and the failures shared across subpackages."""


class StreamrlError(Exception):
    """Root of every streamrl failure."""


class InvalidEvent(StreamrlError):
    """An input record violates the event contract; ``reason`` is machine-readable."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class BrokerError(StreamrlError):
    """The embedded broker could not be started or reached."""


class StoreError(StreamrlError):
    """The state store failed or was misconfigured."""


class StaleEpochError(StoreError):
    """Another processor took over a partition; this one must not write its state any more."""


class SnapshotRejected(StreamrlError):
    """A policy snapshot failed verification (missing/corrupt chunk, checksum, shape, non-finite)."""

    def __init__(self, reason: str, detail: str = "", version: int | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.version = version


class CheckpointError(StreamrlError):
    """A learner checkpoint could not be written or read back."""


class DeliveryFailed(StreamrlError):
    """A produced record was not acknowledged by the broker."""
