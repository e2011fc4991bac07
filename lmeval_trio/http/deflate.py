"""One zlib stream (HTTP ``Content-Encoding: deflate``) from parts compressed separately.

Each part is raw deflate from a fresh compressor, ended by a sync flush: it refers to no
earlier data and ends on a byte boundary without closing the stream, so parts concatenate
into a valid stream (as pigz does). Adler-32 checksums combine arithmetically, so a part
compressed once is reused as is in any stream that contains it.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

LEVEL = 1  # fastest: JSON this repetitive still shrinks ~20x
_HEADER = b"\x78\x01"  # deflate, 32 KiB window, no dictionary (header checksum included)
_FINAL = b"\x03\x00"  # an empty final block: the end of the deflate data
_ADLER_BASE = 65521


@dataclass(frozen=True, slots=True)
class Part:
    """``size`` bytes of data, compressed on their own, and their Adler-32."""

    deflated: bytes
    adler: int
    size: int


def compress(data: bytes, level: int = LEVEL) -> Part:
    compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return Part(deflated, zlib.adler32(data), len(data))


def stream(parts: Sequence[Part]) -> bytes:
    """The zlib stream whose content is the parts' data, in order."""
    adler = 1  # the Adler-32 of nothing
    for part in parts:
        adler = adler32_combine(adler, part.adler, part.size)
    trailer = _FINAL + adler.to_bytes(4, "big")
    return b"".join([_HEADER, *(part.deflated for part in parts), trailer])


def adler32_combine(first: int, second: int, second_size: int) -> int:
    """The Adler-32 of A + B from those of A and B (zlib's adler32_combine)."""
    rem = second_size % _ADLER_BASE
    sum1 = first & 0xFFFF
    sum2 = (rem * sum1) % _ADLER_BASE
    sum1 = (sum1 + (second & 0xFFFF) + _ADLER_BASE - 1) % _ADLER_BASE
    sum2 = (sum2 + (first >> 16) + (second >> 16) + _ADLER_BASE - rem) % _ADLER_BASE
    return sum1 | (sum2 << 16)
