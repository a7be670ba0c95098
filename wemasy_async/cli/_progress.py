"""The progress bar of ``push`` on a terminal: tqdm's bar, with a countdown while the budget waits.

Nothing at all is drawn when stderr is not a terminal, so pipes and logs get only the result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import Any, TextIO

from tqdm import tqdm  # type: ignore[import-untyped]
from tqdm.contrib.logging import logging_redirect_tqdm  # type: ignore[import-untyped]

from ..budgets import SchedulerEvent, WaitEvent

__all__ = ["PushProgress"]

logger = logging.getLogger("wemasy_async")


class _Bar(tqdm):  # type: ignore[misc]
    monitor_interval = 0  # no monitor thread: the bar is refreshed on each chunk and each second of a wait


#: The waits the bar counts down, and how it names them.
_WAIT_TEXTS = {
    "window": "for the rate-limit window",
    "gate": "after a 429 (rate limited)",
    "reserve": "for slots kept for interactive calls",
}


class PushProgress:
    """A progress bar on ``stream`` (stderr) when it is a terminal; nothing at all otherwise.

    tqdm draws it: it fits the terminal's width (and follows a resize), and shows the ids done, the rate
    and the time left. The client reports each wait for the rate-limit budget (:meth:`on_event`); while
    one lasts the bar counts it down, second by second, in front of the bar.
    """

    def __init__(self, stream: TextIO, *, enabled: bool, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.enabled = enabled and _is_terminal(stream)
        self.clock = clock
        self.bar: Any = None
        self._wait_until: float | None = None
        self._wait_text = ""
        self._waiting: asyncio.Event | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._log_through_bar = contextlib.ExitStack()

    def start(self, total: int, done: int = 0) -> None:
        """Show the bar for ``total`` ids, ``done`` of them already (in a running event loop, which counts
        waits down)."""
        if not self.enabled:
            return
        self.bar = _Bar(total=total, initial=done, unit="ids", file=self.stream, dynamic_ncols=True, leave=True)
        # With -v, log lines are written above the bar instead of through it.
        self._log_through_bar.enter_context(logging_redirect_tqdm(loggers=[logger], tqdm_class=_Bar))
        self._waiting = asyncio.Event()
        self._ticker = asyncio.get_running_loop().create_task(self._tick())
        if self._wait_until is not None:
            self._waiting.set()
        self.refresh_wait()

    def update(self, done: int) -> None:
        if self.bar is not None and done > self.bar.n:
            self.bar.update(done - self.bar.n)

    def on_event(self, event: SchedulerEvent) -> None:
        """The client's ``on_event``: a wait for the window, after a 429, or while the window's last slots are
        kept for interactive calls starts a countdown."""
        if not isinstance(event, WaitEvent) or event.seconds is None or event.reason not in _WAIT_TEXTS:
            return
        until = self.clock() + event.seconds
        if self._wait_until is None or until > self._wait_until:
            self._wait_until = until
            self._wait_text = _WAIT_TEXTS[event.reason]
        if self._waiting is not None:
            self._waiting.set()
        self.refresh_wait()

    def wait_description(self) -> str:
        """``waiting 42 s for the rate-limit window`` while a wait lasts, else empty."""
        if self._wait_until is None:
            return ""
        left = self._wait_until - self.clock()
        if left <= 0:
            self._wait_until = None
            return ""
        return f"waiting {math.ceil(left)} s {self._wait_text}"

    def refresh_wait(self) -> None:
        if self.bar is None:
            return
        text = self.wait_description()
        if text != self.bar.desc:
            self.bar.set_description_str(text, refresh=True)

    async def _tick(self) -> None:
        """While a wait lasts, redraw the countdown each time its whole seconds change."""
        assert self._waiting is not None
        while True:
            await self._waiting.wait()
            self.refresh_wait()
            if self._wait_until is None:
                self._waiting.clear()
                continue
            left = self._wait_until - self.clock()
            await asyncio.sleep(max(0.05, left - math.floor(left)) if left > 1 else max(0.05, left))

    async def aclose(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        if self.bar is not None:
            self._wait_until = None
            self.refresh_wait()
            self._log_through_bar.close()
            self.bar.close()
            self.bar = None


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False
