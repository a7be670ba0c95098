"""One namespace per API area, reached as an attribute of the client (``client.sendcloud``)."""

from __future__ import annotations

from .sendcloud import SendcloudResource

__all__ = ["SendcloudResource"]
