"""Both endpoints against the bundled emulator: no token, no network needed.

python examples/quickstart.py
"""

from __future__ import annotations

import asyncio

from wemasy_async import WemasyClient
from wemasy_async.testing import WemasyEmulator


async def main() -> None:
    # A local stand-in for https://api.wemasy.nl/api; order 13 does not exist there.
    async with WemasyEmulator(unknown_order_ids={13}, failed_order_ids={3}) as emulator:
        async with WemasyClient(token="demo-token", base_url=emulator.base_url) as client:
            integration = await client.sendcloud.status()
            print(
                f"SendCloud integration {integration.id}: active={integration.active} connected={integration.connected}"
            )

            result = await client.sendcloud.push_shipments([1, 2, 3], create_label=True)
            print(f"push 1: {result.summary}")

            result = await client.sendcloud.push_shipments([2, 4])
            print(f"push 2: new={result.details.new_orders} skipped={result.details.skipped_orders}")

            # Batches of any size: order 13 is refused by the server, the rest go through.
            result = await client.sendcloud.push_shipments(range(5, 2005), chunk_size=500)
            print(f"push 3: {result.summary.new_orders} new in {result.requests} requests")
            for rejection in result.rejected:
                print(f"  rejected {rejection.order_id}: {rejection.message}")


if __name__ == "__main__":
    asyncio.run(main())
