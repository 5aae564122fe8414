"""ascend_async: await Ascend Graph Engine runs from asyncio, uvloop and trio."""

from __future__ import annotations
