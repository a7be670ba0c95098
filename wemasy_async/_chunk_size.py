"""How many ids a push request carries: learned per token, since every request costs a slot of the budget.

A batch's requests *are* its time (60 a minute at Wemasy), so the size grows while the server takes whole
chunks quickly, stops at the maximum it names, and shrinks when answers slow down. The design:
docs/design/chunk-size.md.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import NamedTuple

import attrs

__all__ = [
    "CHUNK_SECONDS",
    "FIRST_CHUNK_SIZE",
    "LARGEST_CHUNK_SIZE",
    "ChunkSizer",
    "Cut",
    "LearnedSizes",
    "ShareSizes",
    "Sizing",
    "forget_chunk_sizers",
    "shared_chunk_sizer",
]

#: Where a learned size starts, with nothing learned for the token yet (the fixed default of before).
FIRST_CHUNK_SIZE = 500
#: The most ids a request ever carries, whatever the server takes (about 100 KB of JSON).
LARGEST_CHUNK_SIZE = 16_000
#: An answer slower than this (seconds, from the request's sending to its answer) shrinks the size, and
#: the size grows only while the next one is expected within it (a call's timeout bounds it further).
CHUNK_SECONDS = 5.0
#: The growth of a step: a size at most doubles, and only while the answer of the doubled size is expected
#: within the bound: the last answer's time times how much slower the last doubling made it (between 2,
#: linear, and 4, quadratic validation; 4 until two sizes have been measured).
_GROWTH = 2
_WORST_SLOWDOWN = _GROWTH * _GROWTH


logger = logging.getLogger("wemasy_async")


class LearnedSizes(NamedTuple):
    """What a token's batches learned of the server's request sizes, as a fleet shares it."""

    #: The most ids the server takes (None: no maximum known).
    most: int | None
    #: The largest size the server took whole and quickly (0: none yet).
    proven: int


#: A budget kept outside the process shares learned sizes with its fleet: it merges these (the least
#: maximum, the largest proven size) with the fleet's and returns the fleet's, or None if it cannot now.
ShareSizes = Callable[[LearnedSizes], Awaitable["LearnedSizes | None"]]


class Cut(NamedTuple):
    """The size of the next chunk, and whether it is a probe: larger than any the server has taken yet."""

    size: int
    probe: bool = False


@attrs.define
class ChunkSizer:
    """The ids a request of this token's pushes carries next, and the server's maximum as learned.

    A size larger than any the server has taken is tried by one chunk at a time, a probe (:meth:`cut`);
    a batch's other chunks wait for its answer (a round trip: requests are what the budget counts), and a
    probe the server refuses costs one request. Another batch of the token meanwhile cuts at the largest
    size the server took.
    Thread-safe: the batches of every client and thread of the process share the one of their token.
    """

    #: The size the next chunk is cut at.
    size: int = FIRST_CHUNK_SIZE
    #: The most ids the server takes (its 422 "must not have more than N items", or half of a size that was
    #: too large): never probed past. None while nothing says it has a maximum.
    most: int | None = None
    #: The largest size the server took whole (and quickly); 0 while it has taken none.
    proven: int = 0
    _probing: bool = attrs.field(default=False, repr=False)
    #: The latest answer's seconds of each size taken (a handful of sizes: each a doubling of the last).
    _seconds: dict[int, float] = attrs.field(factory=dict, repr=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, repr=False, eq=False)

    def _capped(self, size: int) -> int:
        """``size``, within the server's maximum as learned (called with the lock held)."""
        return size if self.most is None else min(size, self.most)

    def cut(self, ceiling: int | None) -> Cut:
        """The next chunk's size: the learned one (within the caller's fixed ``chunk_size``, ``ceiling``).
        A probe's cutter must call :meth:`probe_done` when its chunk has ended, however it ended."""
        with self._lock:
            if ceiling is not None:  # the caller's fixed size: nothing to probe
                return Cut(self._capped(ceiling))
            size = self._capped(self.size)
            if size <= self.proven:
                return Cut(size)
            if self._probing:  # one probe at a time; others go at a size the server took (or the first size)
                return Cut(max(self.proven, min(size, FIRST_CHUNK_SIZE)))
            self._probing = True
            return Cut(size, probe=True)

    def peek(self, ceiling: int | None) -> int:
        """The size the next chunk would be cut at (a probe's), without cutting it."""
        with self._lock:
            size = self.size if ceiling is None else ceiling
            return self._capped(size)

    def least(self, ceiling: int | None) -> int:
        """The smallest size the next chunk may be cut at (while another batch probes, or not)."""
        with self._lock:
            if ceiling is not None:
                return self._capped(ceiling)
            size = self._capped(self.size)
            return min(size, max(self.proven, min(size, FIRST_CHUNK_SIZE)))

    def probe_done(self, size: int) -> None:
        """The probe's chunk (of ``size`` ids) has ended: another may be cut. One that taught nothing (no
        answer, a 5xx: its size neither taken nor refused) is not tried again at once: the size goes back
        to the largest the server took."""
        with self._lock:
            self._probing = False
            if size > self.proven and self.size >= size and self.proven:
                self.size = self.proven

    def answered(self, size: int, seconds: float, *, bound: float = CHUNK_SECONDS) -> None:
        """A request of ``size`` ids was taken whole (answered with no size error) in ``seconds``: grow the
        size if that request was as large as the current size and a doubled one is expected within
        ``bound`` (at the slowdown the last doubling showed, quadratic until one has); shrink it if this
        one took longer than ``bound``."""
        with self._lock:
            if seconds > bound:
                if size * _GROWTH > self.size:  # as large as the size now (a small piece says little of it)
                    # Slower than the bound: back to a size whose answer is expected within it (at least half).
                    self.size = max(1, min(self.size, size // _GROWTH))
                    self.proven = min(self.proven, self.size)
                return
            self.proven = max(self.proven, size)
            self._seconds[size] = seconds
            half = self._seconds.get(size // _GROWTH)
            slowdown = _WORST_SLOWDOWN if not half else min(_WORST_SLOWDOWN, max(_GROWTH, seconds / half))
            if size >= self.size and seconds * slowdown <= bound:
                grown = min(size * _GROWTH, LARGEST_CHUNK_SIZE)
                self.size = self._capped(grown)

    def learned(self) -> LearnedSizes:
        """What this process's batches learned, to share with a fleet."""
        with self._lock:
            return LearnedSizes(self.most, self.proven)

    def adopt(self, fleet: LearnedSizes) -> None:
        """Take what the fleet learned: its maximum if lower, and its proven size (within the maximum) if
        larger, so that a batch starts where the fleet's batches got, with no probe to get there again."""
        with self._lock:
            if fleet.most is not None and fleet.most > 0 and (self.most is None or fleet.most < self.most):
                self.most = fleet.most
                self.size = min(self.size, fleet.most)
                self.proven = min(self.proven, fleet.most)
            proven = self._capped(min(fleet.proven, LARGEST_CHUNK_SIZE))
            if proven > self.proven:
                self.proven = proven
                self.size = max(self.size, proven)

    def too_large(self, most: int) -> None:
        """The server refused a request as too large; it takes at most ``most`` ids: never probed past."""
        with self._lock:
            if self.most is None or most < self.most:
                self.most = most
            self.size = min(self.size, most)
            self.proven = min(self.proven, most)


@attrs.frozen
class Sizing:
    """How one batch sizes its chunks: the token's sizer, the caller's fixed ``chunk_size`` (a ceiling on
    every chunk; None: the size is learned), and the longest answer a size may grow on."""

    sizer: ChunkSizer = attrs.field(factory=ChunkSizer)
    ceiling: int | None = None
    answer_bound: float = CHUNK_SECONDS
    #: The fleet's share of learned sizes (a Redis budget's), or None: this process learns alone.
    share: ShareSizes | None = None

    @property
    def shares(self) -> bool:
        """Whether the batch shares learned sizes with a fleet (a learned size, and a budget that shares)."""
        return self.share is not None and self.ceiling is None

    async def exchange(self) -> None:
        """Share what the token's sizer learned with the fleet and take what the fleet learned (a batch
        does so as it begins and after each probe); nothing to do for a fixed size or with no fleet. A
        failure only means this process goes on with what it knows."""
        if self.share is None or self.ceiling is not None:
            return
        try:
            fleet = await self.share(self.sizer.learned())
        except Exception as error:  # never a batch's failure: the sizes are an optimisation
            logger.debug("chunk sizes: not shared with the fleet (%s)", type(error).__name__)
            return
        if fleet is not None:
            self.sizer.adopt(fleet)

    def cut(self) -> Cut:
        """The size of the next chunk (see :meth:`ChunkSizer.cut`)."""
        return self.sizer.cut(self.ceiling)

    def peek(self) -> int:
        """The size the next chunk would be cut at, without cutting it."""
        return self.sizer.peek(self.ceiling)

    def least(self) -> int:
        """The smallest size the next chunk may be cut at."""
        return self.sizer.least(self.ceiling)


_registry_lock = threading.Lock()
_registry: dict[tuple[str, str], ChunkSizer] = {}


def shared_chunk_sizer(base_url: str, token: str) -> ChunkSizer:
    """The process's chunk sizer for this token at this base URL, made on first use."""
    key = (base_url, hashlib.sha256(token.encode()).hexdigest())  # the registry never holds the token
    with _registry_lock:
        sizer = _registry.get(key)
        if sizer is None:
            sizer = _registry[key] = ChunkSizer()
        return sizer


def forget_chunk_sizers(base_url: str | None = None) -> None:
    """Drop what was learned (of one base URL, or all), e.g. when a test server at that address stops."""
    with _registry_lock:
        for key in [k for k in _registry if base_url is None or k[0] == base_url.rstrip("/")]:
            del _registry[key]
