"""Producers: simulator, log replayer (and later the snapshot publisher)."""
