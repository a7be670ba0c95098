"""The pytest plugin of wemasy-async: the ``wemasy_emulator`` fixture and its marker.

pytest loads this module at every start in any environment that has the package installed (it is the
package's ``pytest11`` entry point), so it imports nothing of the SDK until a test asks for the fixture.
It sits at the top level, beside ``wemasy_async``, because importing any module inside ``wemasy_async``
first imports the package, and with it aiohttp (hypothesis's plugin is a top-level module for the same
reason).

For the session it also points ``WEMASY_BUDGET_DIR`` (where the host's budget files are) at a fresh temporary
directory, unless it is set: a test's budget never meets one of the user's running programs, or one a
stopped test server left.

``wemasy_emulator`` is a running :class:`wemasy_async.testing.WemasyEmulator` on a free loopback port.
It serves from its own thread, so it works in sync tests and under any async test runner. Configure it
with a marker::

    @pytest.mark.wemasy_emulator(limit=5, window_seconds=0.5, unknown_order_ids={13})
    async def test_push(wemasy_emulator):
        async with WemasyClient(token="t", base_url=wemasy_emulator.base_url) as client:
            ...
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from wemasy_async.testing import WemasyEmulator

__all__ = ["wemasy_emulator"]


_BUDGET_DIR = "WEMASY_BUDGET_DIR"  # wemasy_async.budgets.BUDGET_DIR_ENV_VAR (not imported: see above)
_made_budget_dir: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "wemasy_emulator(**options): options for the wemasy_emulator fixture (WemasyEmulator's)"
    )
    if not os.environ.get(_BUDGET_DIR):
        os.environ[_BUDGET_DIR] = tempfile.mkdtemp(prefix="wemasy-budgets-")
        _made_budget_dir.append(os.environ[_BUDGET_DIR])


def pytest_unconfigure(config: pytest.Config) -> None:
    while _made_budget_dir:
        made = _made_budget_dir.pop()
        if os.environ.get(_BUDGET_DIR) == made:
            del os.environ[_BUDGET_DIR]
        shutil.rmtree(made, ignore_errors=True)


@pytest.fixture
def wemasy_emulator(request: pytest.FixtureRequest) -> Iterator[WemasyEmulator]:
    """A running Wemasy emulator; its ``base_url`` is on 127.0.0.1."""
    from wemasy_async.testing import WemasyEmulator  # here, not at the top: see the module's docstring

    marker = request.node.get_closest_marker("wemasy_emulator")
    options = dict(marker.kwargs) if marker else {}
    with WemasyEmulator(**options).run_in_thread() as emulator:
        yield emulator
