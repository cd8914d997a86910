"""The bottom layer, importable from every package and importing nothing of Mneme.

Public API: :class:`LoopThread` (sync code driving coroutines on a private event loop in a daemon
thread) and :func:`blocking` (one coroutine to the end from sync code, even under a running loop).
"""

from base.bridge import LoopThread, blocking

__all__ = ["LoopThread", "blocking"]
