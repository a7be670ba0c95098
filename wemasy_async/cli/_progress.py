"""The progress of ``push``: on a terminal tqdm's bar, with a countdown while the budget waits; elsewhere
(cron, a container's log, nohup) a line every ``--progress-every`` seconds: ids done, rate, 429s, waits.
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

from ..budgets import RetryEvent, SchedulerEvent, WaitEvent

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


#: Seconds between two progress lines when stderr is not a terminal (``--progress-every``).
LINE_SECONDS = 10.0


class PushProgress:
    """A progress bar on ``stream`` (stderr) when it is a terminal; else a line every ``line_seconds``.

    tqdm draws the bar: it fits the terminal's width (and follows a resize), and shows the ids done, the
    rate and the time left. The client reports each wait for the rate-limit budget (:meth:`on_event`);
    while one lasts the bar counts it down, second by second, in front of the bar, and a line says it.
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        enabled: bool,
        clock: Callable[[], float] = time.monotonic,
        line_seconds: float = LINE_SECONDS,
    ) -> None:
        self.stream = stream
        terminal = _is_terminal(stream)
        self.enabled = enabled and terminal
        #: Lines instead of a bar: stderr is a file or a pipe.
        self.lines = enabled and not terminal
        self.line_seconds = line_seconds
        self.clock = clock
        self._total = self._done = self._first_done = 0
        self._started = 0.0
        self._throttled = 0
        self._liner: asyncio.Task[None] | None = None
        self.bar: Any = None
        self._wait_until: float | None = None
        self._wait_text = ""
        self._waiting: asyncio.Event | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._log_through_bar = contextlib.ExitStack()

    def start(self, total: int, done: int = 0) -> None:
        """Show the bar for ``total`` ids, ``done`` of them already (in a running event loop, which counts
        waits down), or begin the lines."""
        self._total, self._done, self._first_done, self._started = total, done, done, self.clock()
        if self.lines:
            self._liner = asyncio.get_running_loop().create_task(self._write_lines())
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
        self._done = done
        if self.bar is not None and done > self.bar.n:
            self.bar.update(done - self.bar.n)

    def on_event(self, event: SchedulerEvent) -> None:
        """The client's ``on_event``: a wait for the window, after a 429, or while the window's last slots are
        kept for interactive calls starts a countdown; a retry after a 429 is counted."""
        if isinstance(event, RetryEvent) and event.cause == "429":
            self._throttled += 1
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

    def line(self) -> str:
        """``wemasy-async: 1500 of 40000 ids (3.8%), 25 ids/s, 0 x 429, waiting 42 s for the rate-limit window``."""
        share = self._done / self._total * 100 if self._total else 100.0
        elapsed = self.clock() - self._started
        rate = (self._done - self._first_done) / elapsed if elapsed > 0 else 0.0
        text = (
            f"wemasy-async: {self._done} of {self._total} ids ({share:.1f}%), {rate:.0f} ids/s, {self._throttled} x 429"
        )
        wait = self.wait_description()
        return f"{text}, {wait}" if wait else text

    async def _write_lines(self) -> None:
        while True:
            await asyncio.sleep(self.line_seconds)
            with contextlib.suppress(OSError, ValueError):  # a closed or full stderr stops no push
                print(self.line(), file=self.stream, flush=True)

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
        if self._liner is not None:
            self._liner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._liner
            self._liner = None
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
