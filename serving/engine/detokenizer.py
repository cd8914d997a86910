"""Incremental detokenization with stop strings.

Text is released only when it cannot change any more: not while the last bytes are an
incomplete UTF-8 character, and not while the tail could still be the start of a stop string.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class Detokenizer:
    def __init__(self, tokenizer: Any, stop: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.ids: list[int] = []
        self.text = ""  # decoded text of every id so far (up to any stop string)
        self.sent = 0  # characters of ``text`` already released
        self.stopped = False
        # Only a short window of ids is decoded per token (as vLLM does), not the whole
        # output: ids[prefix:read] were decoded already and give the context for spacing.
        self._prefix = 0
        self._read = 0

    def add(self, token: int) -> str:
        """Add a generated token; return the text that is now final (may be empty)."""
        self.ids.append(token)
        before = self.tokenizer.decode(
            self.ids[self._prefix : self._read], skip_special_tokens=True
        )
        after = self.tokenizer.decode(self.ids[self._prefix :], skip_special_tokens=True)
        if after.endswith("\ufffd"):  # an incomplete multi-byte character: wait for more
            return ""
        self.text += after[len(before) :]
        self._prefix, self._read = self._read, len(self.ids)
        for stop in self.stop:
            found = self.text.find(stop, max(0, self.sent - len(stop)))
            if found != -1:
                self.text = self.text[:found]
                self.stopped = True
                return self._release(len(self.text))
        hold = max((self._partial_stop(s) for s in self.stop), default=0)
        return self._release(len(self.text) - hold)

    def flush(self) -> str:
        """Release everything held back (the sequence ended for another reason)."""
        return self._release(len(self.text.rstrip("\ufffd")))

    def _partial_stop(self, stop: str) -> int:
        """Length of the longest tail of ``text`` that is a proper prefix of ``stop``."""
        for size in range(min(len(stop) - 1, len(self.text)), 0, -1):
            if self.text.endswith(stop[:size]):
                return size
        return 0

    def _release(self, upto: int) -> str:
        if upto <= self.sent:
            return ""
        piece = self.text[self.sent : upto]
        self.sent = upto
        return piece
