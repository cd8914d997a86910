"""Public ids: what the REST API shows in place of SQL row ids (issue 17).

Row ids are one counter across tenants: a new tenant's first document was id 4, its first
episode id 226, which told it how much everybody else had stored. Every id that crosses the REST
boundary (documents, episodes, stories, nodes, in paths, bodies, results and messages) is
instead a keyed pseudo-random permutation of the row id over ``[1, 2**62]``, the range the
OpenAPI schema states; consecutive rows get unrelated ids, and an id says nothing about any
count. Ids stay integers, so clients and the schema do not change, and the CLI and the Python
SDK, which never see API ids, go on using row ids.

The permutation is a balanced Feistel network over 62 bits (two 31-bit halves) whose round
function is HMAC-SHA256 under the database's key (``memory/public_ids.py``), so every API
process on the database agrees. Four rounds of a pseudo-random function already make a strong
pseudo-random permutation (Luby and Rackoff, 1988), but with 31-bit halves that bound holds only
up to about 2**15 ids; more rounds push it towards 2**31 (Patarin, 2004) for a few microseconds
an id, so :data:`ROUNDS` is 8. Decoding never fails: every integer in range is some row's public
id, so an id that names no record of the caller's tenant is simply not found (404), exactly like
a missing one.
"""

from __future__ import annotations

import hmac
import re

from app.api.schemas import MAX_ID, PublicId

ID_BITS = 62
"""Width of an id, in bits: ids run over ``[1, 2**ID_BITS]`` (:data:`MAX_ID`)."""
ROUNDS = 8
"""Feistel rounds (see the module's docstring)."""

# Lower layers know only row ids: their messages say "story 12", "node 7", "episodes [3, 4]".
_MENTION = re.compile(
    r"\b(?P<noun>(?P<kind>stor|node|episode|document)(?:y|ies|s)?) "
    r"(?P<ids>\[\d+(?:, \d+)*\]|\d+\b)"
)
_NUMBER = re.compile(r"\d+")


class Permutation:
    """A keyed permutation of ``[1, 2**bits]``: the Feistel network of the module's docstring
    (``bits`` is :data:`ID_BITS` but in tests, which check small widths exhaustively)."""

    def __init__(self, key: bytes, bits: int = ID_BITS) -> None:
        if bits % 2 or not 2 <= bits <= 64:
            raise ValueError(f"bits must be even and in [2, 64], not {bits}")
        self._key = key
        self._half = bits // 2
        self._mask = (1 << self._half) - 1
        self.size = 1 << bits
        """The largest id (and the number of ids)."""

    def _round(self, number: int, half: int) -> int:
        message = number.to_bytes(1, "big") + half.to_bytes(4, "big")
        return int.from_bytes(hmac.digest(self._key, message, "sha256")[:4], "big") & self._mask

    def encode(self, row_id: int) -> PublicId:
        """The public id of ``row_id`` (in ``[1, 2**62]``: row ids always are)."""
        if not 1 <= row_id <= self.size:
            raise ValueError(f"row id {row_id} is outside [1, {self.size}]")
        left, right = (row_id - 1) >> self._half, (row_id - 1) & self._mask
        for number in range(ROUNDS):
            left, right = right, left ^ self._round(number, right)
        return PublicId((left << self._half | right) + 1)

    def decode(self, public_id: int) -> int:
        """The row id that ``public_id`` stands for (whether or not such a row exists)."""
        if not 1 <= public_id <= self.size:
            raise ValueError(f"id {public_id} is outside [1, {self.size}]")
        left, right = (public_id - 1) >> self._half, (public_id - 1) & self._mask
        for number in reversed(range(ROUNDS)):
            left, right = right ^ self._round(number, left), left
        return (left << self._half | right) + 1


class PublicIds:
    """Row ids to public ids and back, one :class:`Permutation` per kind of record, each under
    its own key derived from the database's: a story and a document with the same row id get
    unrelated ids, so no two of a tenant's ids line up either."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError(f"a public-id key needs at least 16 bytes, not {len(key)}")

        def derived(kind: str) -> Permutation:
            label = f"mneme public ids: {kind}".encode()
            return Permutation(hmac.digest(key, label, "sha256"))

        self.documents = derived("documents")
        """Documents (their namespaces' row ids)."""
        self.episodes = derived("episodes")
        self.stories = derived("stories")
        self.nodes = derived("nodes")
        """Story nodes."""
        self._named = {
            "stor": self.stories,
            "node": self.nodes,
            "episode": self.episodes,
            "document": self.documents,
        }

    def reword(self, message: str) -> str:
        """A message from below the API (which names records by row id: ``story 12``,
        ``episodes [3, 4]``) with each such id replaced by its public id, so it leaks nothing.
        Only for messages that come from the stores or the agents: the routes' own messages
        already name the id the client sent."""

        def mention(found: re.Match[str]) -> str:
            kind = self._named[found["kind"]]

            def public(number: re.Match[str]) -> str:
                value = int(number[0])
                return str(kind.encode(value)) if 1 <= value <= MAX_ID else number[0]

            return f"{found['noun']} {_NUMBER.sub(public, found['ids'])}"

        return _MENTION.sub(mention, message)
