"""The configuration in force, as one object the server's rooms share."""

from __future__ import annotations

from sipserver.config.schema import Config


class LiveConfig:
    """Each room reads `current` when it acts, so a reload, which swaps it in one
    assignment, reaches every room at once and none keeps a stale copy."""

    def __init__(self, config: Config) -> None:
        self.current = config
