"""Test helpers: an emulator of the Wemasy API (and, as a pytest plugin, fixtures that run it).

>>> from wemasy_async.testing import WemasyEmulator
>>> async with WemasyEmulator(limit=5, window_seconds=0.5) as emulator:
...     async with WemasyClient(token="t", base_url=emulator.base_url) as client:
...         ...
"""

from __future__ import annotations

from ._emulator import CannedResponse, Fault, FaultSwitches, RequestRecord, WemasyEmulator
from ._throttle import FixedWindowThrottle, ThrottleDecision

__all__ = [
    "CannedResponse",
    "Fault",
    "FaultSwitches",
    "FixedWindowThrottle",
    "RequestRecord",
    "ThrottleDecision",
    "WemasyEmulator",
]
