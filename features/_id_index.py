"""Id -> row lookups held in flat arrays, so many processes can share one memory-mapped copy.

A :class:`pandas.Index` of string ids is a hash table of Python objects: every worker process
builds its own, and at tens of millions of buyers it costs gigabytes per worker.
:class:`HashedIds` gives the same answer (the row of each id, ``-1`` when unknown) from two
flat arrays that can live in a memory-mapped file:

- ``ids``: the ids as UTF-8 bytes, zero-padded to a fixed width (a multiple of 8 bytes), in
  row order;
- ``buckets``: a hash table of 8-slot buckets (64 bytes, one cache line each). A slot holds
  a 32-bit fingerprint of an id's hash and its row + 1 (0: empty). Each id sits in one of two
  buckets chosen by its hash (the emptier one when the table is built), so a table at an
  average of 2 to 4 ids per bucket never overflows in practice; the build doubles the table
  if one does.

The hash is FNV-1a over the 8-byte words of the padded id, then a 64-bit finaliser: fixed,
so a table written by one process is read by another. A lookup hashes all the queries in a
few vectorised passes, reads their two buckets, and compares the stored id of the slot whose
fingerprint matches with the query: an id is found only when its bytes are equal, so a hash
collision never gives a wrong row. Ids holding a NUL character cannot be stored (the zero
padding would make ``"a"`` and ``"a\\0"`` equal) and never match.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import SchemaError

__all__ = ["HashedIds"]

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MIX_1 = 0xFF51AFD7ED558CCD
_MIX_2 = 0xC4CEB9FE1A85EC53
_MASK_64 = (1 << 64) - 1


def _hash_words(words: np.ndarray) -> np.ndarray:
    """64-bit hash of each row of a ``(n, k)`` little-endian uint64 matrix."""
    h = np.full(words.shape[0], _FNV_OFFSET, dtype=np.uint64)
    prime = np.uint64(_FNV_PRIME)
    for j in range(words.shape[1]):
        h ^= words[:, j]
        h *= prime
    h ^= h >> np.uint64(33)
    h *= np.uint64(_MIX_1)
    h ^= h >> np.uint64(33)
    h *= np.uint64(_MIX_2)
    h ^= h >> np.uint64(33)
    return h


def _hash_one(key: bytes) -> int:
    """:func:`_hash_words` of one padded id, in Python integers (for a single lookup)."""
    h = _FNV_OFFSET
    for start in range(0, len(key), 8):
        h = ((h ^ int.from_bytes(key[start : start + 8], "little")) * _FNV_PRIME) & _MASK_64
    h ^= h >> 33
    h = (h * _MIX_1) & _MASK_64
    h ^= h >> 33
    h = (h * _MIX_2) & _MASK_64
    return h ^ (h >> 33)


def _encode(values: Sequence[str], width: int) -> np.ndarray:
    """Ids as ``S{width}`` (UTF-8); longer ids are cut, so callers pass one word of slack."""
    try:
        return np.array(values, dtype=f"S{width}")  # ASCII: one C pass
    except UnicodeEncodeError:
        # a lone surrogate is kept as bytes that no valid UTF-8 id has: it stays unknown
        return np.array([str(v).encode("utf-8", "surrogatepass") for v in values], dtype=f"S{width}")


_SLOTS = 8
_ROW_BITS = np.uint64(0xFFFFFFFF)


def _second(h: np.ndarray) -> np.ndarray:
    """The hash of the second bucket choice (a further mix of the first)."""
    g = h * np.uint64(_MIX_1)
    return g ^ (g >> np.uint64(29))


class HashedIds:
    """Row of each id through a bucketed hash table in flat arrays (see the module docstring).

    Parameters
    ----------
    ids
        Fixed-width bytes (``S{w}``, ``w`` a multiple of 8), one per row.
    buckets
        ``uint64`` array of shape ``(n_buckets, 8)``, ``n_buckets`` a power of two; a slot is
        ``fingerprint << 32 | (row + 1)``, 0 when empty.

    Examples
    --------
    >>> index = HashedIds.build(["m1", "m2", "merchant-3"])
    >>> index.lookup(["merchant-3", "m9", "m1"]).tolist()
    [2, -1, 0]
    >>> len(index), index.lookup_one("m2")
    (3, 1)
    """

    def __init__(self, ids: np.ndarray, buckets: np.ndarray) -> None:
        width = ids.dtype.itemsize
        if ids.dtype.kind != "S" or width % 8 or ids.ndim != 1 or ids.size >= 2**32 - 1:
            raise SchemaError("id index", "ids", "fixed-width bytes, a multiple of 8 wide", str(ids.dtype))
        n_buckets = buckets.shape[0] if buckets.ndim == 2 else 0
        if buckets.dtype != np.uint64 or buckets.shape != (n_buckets, _SLOTS) or n_buckets & (n_buckets - 1) or not n_buckets:
            raise SchemaError("id index", "buckets", f"uint64 (2^k, {_SLOTS})", f"{buckets.dtype} {buckets.shape}")
        self.ids = ids
        self.buckets = buckets
        self.width = width
        self._mask = np.uint64(n_buckets - 1)

    @classmethod
    def build(cls, ids: Sequence[str] | np.ndarray) -> HashedIds:
        """Index distinct string ids (row ``i`` is ``ids[i]``).

        Raises
        ------
        SchemaError
            An id holds a NUL character or appears twice.
        """
        values = list(ids.tolist() if isinstance(ids, np.ndarray) else ids)
        if "\x00" in "".join(values):
            raise SchemaError("id index", "ids", "ids without NUL characters", "an id holding NUL")
        longest = max((len(v.encode("utf-8", "surrogatepass")) for v in values), default=1)
        return cls.from_encoded(_encode(values, max(8, -(-longest // 8) * 8)))

    @classmethod
    def from_encoded(cls, encoded: np.ndarray) -> HashedIds:
        """Index ids already encoded as fixed-width bytes (``S{w}``, ``w`` a multiple of 8).

        The column-wise form of :meth:`build` for very large vocabularies: no Python string
        per id. The ids must not hold NUL characters (the padding).
        """
        encoded = np.ascontiguousarray(encoded)
        n, width = encoded.size, encoded.dtype.itemsize
        h = _hash_words(encoded.view("<u8").reshape(n, width // 8))
        slot_values = ((h >> np.uint64(32)) << np.uint64(32)) | (np.arange(n, dtype=np.uint64) + np.uint64(1))
        n_buckets = 1
        while n_buckets * 2.5 < n:
            n_buckets *= 2
        while True:
            buckets = _fill(h, slot_values, n_buckets)
            if buckets is not None:
                break
            n_buckets *= 2  # a bucket overflowed: practically never at this load
        del h, slot_values
        index = cls(encoded, buckets)
        # every id finds its own row: fails when an id appears twice (the first one answers)
        for start in range(0, n, 1 << 20):
            block = encoded[start : start + (1 << 20)]
            rows = index._find(block.view("<u8").reshape(block.size, width // 8))
            if (rows != np.arange(start, start + block.size)).any():
                raise SchemaError("id index", "ids", "distinct ids", "an id that appears twice")
        return index

    def __len__(self) -> int:
        return int(self.ids.size)

    def lookup(self, values: Any) -> np.ndarray:
        """Row of each id (``int64``), ``-1`` when unknown (or not a string)."""
        values = values.tolist() if isinstance(values, np.ndarray) else list(values)
        m = len(values)
        if m == 0 or self.ids.size == 0:
            return np.full(m, -1, dtype=np.int64)
        try:
            plain = "\x00" not in "".join(values)  # one C pass: all strings, none holding NUL
        except TypeError:
            plain = False
        if not plain:  # rare: missing values (None) or NUL characters are never stored ids
            usable = np.array([isinstance(v, str) and "\x00" not in v for v in values], dtype=bool)
            values = [v if ok else "" for v, ok in zip(values, usable.tolist(), strict=True)]
        words_per_id = self.width // 8
        # one word of slack: an id longer than the widest stored one is not stored
        query = _encode(values, self.width + 8).view("<u8").reshape(m, words_per_id + 1)
        out = self._find(np.ascontiguousarray(query[:, :words_per_id]), values)
        out[query[:, words_per_id] != 0] = -1
        if not plain:
            out[~usable] = -1
        return out

    def _find(self, key: np.ndarray, values: Sequence[Any] | None = None) -> np.ndarray:
        """Rows of ids given as padded words (``(m, width / 8)`` uint64), ``-1`` when absent."""
        m = key.shape[0]
        h = _hash_words(key)
        choices = np.stack([h & self._mask, _second(h) & self._mask], axis=1)
        slots = self.buckets[choices].reshape(m, 2 * _SLOTS)
        fingerprint_match = (slots >> np.uint64(32)) == (h >> np.uint64(32))[:, None]
        first = fingerprint_match.argmax(axis=1)
        at = np.arange(m)
        # no fingerprint match (empty slots included) gives row -1
        rows = np.where(fingerprint_match[at, first], (slots[at, first] & _ROW_BITS).astype(np.int64) - 1, -1)
        keys = key.view(f"S{self.width}").ravel()
        found = (rows >= 0) & (self.ids[rows] == keys)
        out = np.where(found, rows, -1)
        # A fingerprint that matched another id (about 1 query in 2^28): the other slots of
        # the two buckets may hold the id, so those queries are settled one by one.
        for i in np.flatnonzero(~found & (rows >= 0)).tolist():
            out[i] = self.lookup_one(values[i] if values is not None else bytes(keys[i]).decode("utf-8", "surrogatepass"))
        return out

    def lookup_one(self, value: str) -> int:
        """Row of one id (``-1`` when unknown): the scalar form of :meth:`lookup`."""
        key = value.encode("utf-8", "surrogatepass")
        if not key or len(key) > self.width or b"\x00" in key or self.ids.size == 0:
            return -1
        h = np.uint64(_hash_one(key.ljust(self.width, b"\x00")))
        fingerprint = int(h >> np.uint64(32))
        for bucket in (int(h & self._mask), int(_second(np.array([h]))[0] & self._mask)):
            for slot in self.buckets[bucket].tolist():
                if slot >> 32 == fingerprint and slot & 0xFFFFFFFF and self.ids[(slot & 0xFFFFFFFF) - 1] == key:
                    return (slot & 0xFFFFFFFF) - 1
        return -1


def _fill(h: np.ndarray, slot_values: np.ndarray, n_buckets: int) -> np.ndarray | None:
    """Place every id in the emptier of its two buckets; ``None`` if a bucket overflows.

    Vectorised in rounds: each round, the ids still to place are ranked within their
    preferred bucket, and those that fit in the bucket's free slots are written.
    """
    mask = np.uint64(n_buckets - 1)
    first = (h & mask).astype(np.int64)
    second = (_second(h) & mask).astype(np.int64)
    buckets = np.zeros((n_buckets, _SLOTS), dtype=np.uint64)
    fill = np.zeros(n_buckets, dtype=np.int64)
    pending = np.arange(h.size, dtype=np.int64)
    for _ in range(4):
        if not pending.size:
            return buckets
        # the emptier choice as of this round's start
        target = np.where(fill[second[pending]] < fill[first[pending]], second[pending], first[pending])
        order = np.argsort(target, kind="stable")
        target_sorted = target[order]
        starts = np.searchsorted(target_sorted, target_sorted, side="left")
        place = fill[target_sorted] + (np.arange(target_sorted.size) - starts)
        fits = place < _SLOTS
        chosen = pending[order][fits]
        buckets[target_sorted[fits], place[fits]] = slot_values[chosen]
        np.add.at(fill, target_sorted[fits], 1)
        pending = np.sort(pending[order][~fits])
    return buckets if not pending.size else None
