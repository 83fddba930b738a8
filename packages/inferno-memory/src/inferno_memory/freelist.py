"""`SortedKeys`: a sorted multiset-free collection of ints with O(log n) search.

The pure-Python pool core keeps its free blocks here, keyed by ``(size, address)`` packed into
one int so the first key at or above ``(wanted, 0)`` is the best fit (smallest adequate block,
lowest address among equals). A flat sorted list would make every insert and delete an O(n)
memmove; splitting it into buckets of bounded length keeps that cost constant while searches
stay two bisections (the bucket maxima, then one bucket).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterator

__all__ = ["ADDRESS_BITS", "SortedKeys", "pack", "unpack"]

ADDRESS_BITS = 64
_ADDRESS_MASK = (1 << ADDRESS_BITS) - 1


def pack(size: int, address: int) -> int:
    """Pack ``(size, address)`` into one int that sorts by size, then address."""
    return (size << ADDRESS_BITS) | address


def unpack(key: int) -> tuple[int, int]:
    """The ``(size, address)`` packed by `pack`."""
    return key >> ADDRESS_BITS, key & _ADDRESS_MASK


class SortedKeys:
    """Distinct ints kept in order; ``add``, ``remove`` and ``ceiling`` are O(log n).

    Not thread-safe: the owner holds its own lock.
    """

    # Bucket length bounds: long enough that the list of buckets stays short, short enough
    # that an insort inside one bucket is a small memmove.
    _LOAD = 512

    __slots__ = ("_buckets", "_len", "_maxes")

    def __init__(self) -> None:
        self._buckets: list[list[int]] = []
        self._maxes: list[int] = []
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[int]:
        for bucket in self._buckets:
            yield from bucket

    def add(self, key: int) -> None:
        """Insert ``key`` (which must not be present)."""
        self._len += 1
        if not self._buckets:
            self._buckets.append([key])
            self._maxes.append(key)
            return
        i = bisect_left(self._maxes, key)
        if i == len(self._maxes):
            i -= 1
            bucket = self._buckets[i]
            bucket.append(key)
            self._maxes[i] = key
        else:
            bucket = self._buckets[i]
            insort(bucket, key)
        if len(bucket) > 2 * self._LOAD:
            upper = bucket[self._LOAD :]
            del bucket[self._LOAD :]
            self._buckets.insert(i + 1, upper)
            self._maxes[i] = bucket[-1]
            self._maxes.insert(i + 1, upper[-1])

    def remove(self, key: int) -> None:
        """Remove ``key``; raises `KeyError` when it is absent."""
        i = bisect_left(self._maxes, key)
        if i == len(self._maxes):
            raise KeyError(key)
        bucket = self._buckets[i]
        j = bisect_left(bucket, key)
        if bucket[j] != key:
            raise KeyError(key)
        del bucket[j]
        self._len -= 1
        if not bucket:
            del self._buckets[i]
            del self._maxes[i]
        elif j == len(bucket):
            self._maxes[i] = bucket[-1]

    def ceiling(self, key: int) -> int | None:
        """The smallest stored key ``>= key``, or None."""
        i = bisect_left(self._maxes, key)
        if i == len(self._maxes):
            return None
        bucket = self._buckets[i]
        return bucket[bisect_left(bucket, key)]

    def last(self) -> int | None:
        """The largest stored key, or None when empty."""
        return self._maxes[-1] if self._maxes else None
