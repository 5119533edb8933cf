"""Channel layers that misbehave on purpose, to prove the stream does not depend on them."""

from __future__ import annotations

import itertools
from typing import Any

from channels_redis.core import RedisChannelLayer


class DroppingRedisChannelLayer(RedisChannelLayer):
    """Silently drops every other group message, as a full channels_redis channel does."""

    _sent = itertools.count()

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        if next(self._sent) % 2 == 0:
            return
        await super().group_send(group, message)
