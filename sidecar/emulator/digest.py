"""The SHA-256 of the audio a task sent, computed when someone reads it.

:class:`TaskRecord.audio_sha256 <sidecar.emulator.stats.TaskRecord>` is the
SHA-256 of every binary frame a task sent. Hashing each frame as it goes out
cost about as much CPU as building it, and hashing the same ~100 kB again for
every task of a benchmark is waste: a task's audio is the concatenation of
deterministic pieces (the WAV header, each sentence's audio), so the hash state
after a given sequence of pieces is the same for every task that sends it.

:class:`AudioDigest` keeps a task's pieces and hashes only when asked (a stats
snapshot, the task's end), reusing the state after a shared prefix of pieces
from a small process-wide cache.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import OrderedDict, deque
from collections.abc import Hashable
from typing import Final

__all__ = ["AudioDigest"]

_CACHE_ENTRIES: Final = 256
_ids: Final = itertools.count(1)


class _State:
    """The hash of one sequence of pieces; ``node_id`` names that sequence."""

    __slots__ = ("hex", "node_id", "sha")

    def __init__(self, sha: hashlib._Hash) -> None:
        self.node_id = next(_ids)  # never reused, so an evicted entry cannot alias
        self.sha = sha
        self.hex = sha.hexdigest()


_ROOT: Final = _State(hashlib.sha256())
_cache: OrderedDict[tuple[int, Hashable], _State] = OrderedDict()


def _advance(state: _State, key: Hashable, data: bytes) -> _State:
    """Return the state after ``state`` followed by the piece ``data`` named ``key``."""
    cache_key = (state.node_id, key)
    found = _cache.get(cache_key)
    if found is not None:
        _cache.move_to_end(cache_key)
        return found
    sha = state.sha.copy()
    sha.update(data)
    found = _State(sha)
    _cache[cache_key] = found
    if len(_cache) > _CACHE_ENTRIES:
        _cache.popitem(last=False)
    return found


class AudioDigest:
    """SHA-256 of a prefix of one task's audio stream, made of named pieces.

    ``key`` must name the content of ``data`` exactly (same key, same bytes):
    the hash after a piece is reused for any later piece with the same key
    that follows the same pieces.
    """

    def __init__(self) -> None:
        self._pieces: deque[tuple[Hashable, bytes]] = deque()  # not hashed yet
        self._state = _ROOT
        self._hashed = 0  # bytes of the stream that self._state covers

    def append(self, key: Hashable, data: bytes) -> None:
        """Add the next piece of the stream (it may be sent only in part)."""
        self._pieces.append((key, data))

    def hexdigest(self, length: int) -> str:
        """Return the SHA-256 of the stream's first ``length`` bytes (hex)."""
        pieces = self._pieces
        while pieces and self._hashed + len(pieces[0][1]) <= length:
            key, data = pieces.popleft()  # a whole piece was sent: it can be shared
            self._state = _advance(self._state, key, data)
            self._hashed += len(data)
        rest = length - self._hashed
        if rest == 0:
            return self._state.hex
        if not pieces or rest < 0:
            raise ValueError(f"{length} bytes asked, the stream holds fewer")
        sha = self._state.sha.copy()
        sha.update(memoryview(pieces[0][1])[:rest])
        return sha.hexdigest()
