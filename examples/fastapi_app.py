"""A FastAPI app that calls Wemasy: one client per worker process, made in the app's lifespan.

A client belongs to the event loop it first runs in, so each worker makes its own as it starts (never one
made at import time and shared). Handlers' calls are interactive: they go before a batch's requests on the
same token, which leave them the slots they use; the push started in the background is bulk. Workers on
one host share the token's budget with WEMASY_BUDGET=host; give WEMASY_REDIS_URL to share it across hosts.

    WEMASY_API_TOKEN=... uvicorn examples.fastapi_app:app --workers 2
    curl localhost:8000/sendcloud
    curl -X POST 'localhost:8000/push?first=1001&last=3000'

Against the emulator: ``wemasy-async serve --window 2`` prints the WEMASY_BASE_URL and
WEMASY_WINDOW_SECONDS to export before starting uvicorn.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import BackgroundTasks, FastAPI, Request

from wemasy_async import WemasyClient

logger = logging.getLogger("fastapi_app")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with WemasyClient() as client:  # token, base URL and window from the environment
        app.state.wemasy = client
        yield


app = FastAPI(lifespan=lifespan)


@app.get("/sendcloud")
async def sendcloud_status(request: Request) -> dict[str, bool | None]:
    """The integration's state: an interactive call, served before any batch on the token."""
    integration = await request.app.state.wemasy.sendcloud.status()
    return {"active": integration.active, "connected": integration.connected}


@app.post("/push")
async def push(request: Request, first: int, last: int, background: BackgroundTasks) -> dict[str, int]:
    """Queue the orders first..last for shipments, in the background: a bulk batch."""
    background.add_task(_push, request.app.state.wemasy, range(first, last + 1))
    return {"accepted": last - first + 1}


async def _push(client: WemasyClient, ids: range) -> None:
    result = await client.sendcloud.push_shipments(ids)
    logger.warning(
        "pushed %d ids: %d new, %d to push again", len(ids), result.summary.new_orders, len(result.retry_order_ids)
    )
