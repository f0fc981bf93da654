"""One backoff for every loop that waits out something it cannot wait on (Redis gone, a lease
held elsewhere): pauses that double from ``first`` up to ``most`` seconds, back to ``first`` after
a success.

::

    pause = Backoff(0.002, 0.05)
    while not await limiter.try_acquire():
        await pause.sleep()
"""

from __future__ import annotations

import asyncio

__all__ = ["Backoff"]


class Backoff:
    """Doubling pauses between tries.

    :param first: the first pause, in seconds (> 0).
    :param most: the longest pause, in seconds (>= ``first``).
    """

    __slots__ = ("first", "most", "next")

    def __init__(self, first: float, most: float) -> None:
        if not 0 < first <= most:
            raise ValueError(f"a backoff needs 0 < first <= most, got {first} and {most}")
        self.first = first
        self.most = most
        #: The pause the next :meth:`sleep` takes.
        self.next = first

    @property
    def failing(self) -> bool:
        """Whether a pause was taken since the last :meth:`reset` (the first failure of a series
        is the one worth logging)."""
        return self.next != self.first

    def reset(self) -> None:
        """A try succeeded: the next pause is ``first`` again."""
        self.next = self.first

    def step(self) -> float:
        """Takes the next pause's length (and doubles the one after, up to ``most``)."""
        pause = self.next
        self.next = min(pause * 2, self.most)
        return pause

    async def sleep(self) -> None:
        """Sleeps the next pause."""
        await asyncio.sleep(self.step())
