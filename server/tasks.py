"""Background tasks of the server's parts: started in the lifespan, cancelled at shutdown."""

from __future__ import annotations

import asyncio
import contextlib


async def cancel_tasks(*tasks: asyncio.Task[object] | None) -> None:
    """Cancel each task (``None`` skipped) and wait until it has ended; its cancellation is not an error."""
    for task in tasks:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
