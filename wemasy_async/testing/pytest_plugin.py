"""pytest fixtures for code that uses wemasy-async; installed with the package as a pytest plugin.

``wemasy_emulator`` is a running :class:`WemasyEmulator` on a free loopback port. It serves from its
own thread, so it works in sync tests and under any async test runner. Configure it with a marker::

    @pytest.mark.wemasy_emulator(limit=5, window_seconds=0.5, unknown_order_ids={13})
    async def test_push(wemasy_emulator):
        async with WemasyClient(token="t", base_url=wemasy_emulator.base_url) as client:
            ...
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ._emulator import WemasyEmulator

__all__ = ["wemasy_emulator"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "wemasy_emulator(**options): options for the wemasy_emulator fixture (WemasyEmulator's)"
    )


@pytest.fixture
def wemasy_emulator(request: pytest.FixtureRequest) -> Iterator[WemasyEmulator]:
    """A running Wemasy emulator; its ``base_url`` is on 127.0.0.1."""
    marker = request.node.get_closest_marker("wemasy_emulator")
    options = dict(marker.kwargs) if marker else {}
    with WemasyEmulator(**options).run_in_thread() as emulator:
        yield emulator
