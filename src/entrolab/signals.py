"""Ctrl-C / SIGTERM ask the training loop to checkpoint and stop after the current step."""

from __future__ import annotations

import signal
from typing import Any


class StopFlag:
    """Context manager: SIGINT / SIGTERM set ``requested`` (the signal's name); a second Ctrl-C aborts at once.

    Off the main thread no handlers can be installed, and the flag simply stays unset.
    """

    def __init__(self) -> None:
        self.requested: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handlers
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    @property
    def exit_code(self) -> int:
        """The conventional exit code of the requested signal (130 for SIGINT, 143 for SIGTERM)."""
        return 130 if self.requested == "SIGINT" else 143

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


__all__ = ["StopFlag"]
