"""Both endpoints against the bundled emulator: no token, no network needed.

python examples/quickstart.py
"""

from __future__ import annotations

import asyncio

from wemasy_async import ValidationError, WemasyClient
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

            try:
                await client.sendcloud.push_shipments([5, 13])
            except ValidationError as error:
                print(f"push 3 refused: {error.message} -> {error.index_errors()}")


if __name__ == "__main__":
    asyncio.run(main())
