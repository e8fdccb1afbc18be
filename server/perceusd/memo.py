"""Expensive facts (file sha256s, an image's directory set) computed once per key, in a thread,
however many sessions ask at the same moment."""

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class Memo:
    """An LRU of results computed in a thread, one computation per key however many wait."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._done: OrderedDict[Hashable, Any] = OrderedDict()
        self._running: dict[Hashable, asyncio.Future] = {}

    async def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        if key in self._done:
            self._done.move_to_end(key)
            return self._done[key]
        running = self._running.get(key)
        if running is None:
            running = asyncio.ensure_future(asyncio.to_thread(compute))
            self._running[key] = running
            running.add_done_callback(lambda fut, key=key: self._finish(key, fut))
        return await asyncio.shield(running)

    def _finish(self, key: Hashable, fut: asyncio.Future) -> None:
        self._running.pop(key, None)
        if not fut.cancelled() and fut.exception() is None:
            self._done[key] = fut.result()
            while len(self._done) > self.size:
                self._done.popitem(last=False)
