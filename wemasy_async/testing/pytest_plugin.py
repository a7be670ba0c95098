"""The pytest plugin's former place, kept so that imports of it go on working.

The plugin itself is the top-level module ``_wemasy_async_pytest`` (the package's ``pytest11`` entry
point), which pytest loads by itself: nothing needs to name this module. It moved out of the package so
that pytest's start does not import the SDK and aiohttp in every environment that has the package.
"""

from __future__ import annotations

from _wemasy_async_pytest import pytest_configure, wemasy_emulator

__all__ = ["pytest_configure", "wemasy_emulator"]
