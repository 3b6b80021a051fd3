"""werkzeug's multipart decoder, without two regular expressions compiled for every request.

``MultipartDecoder.__init__`` compiles two expressions around the request's boundary; every
client picks a new boundary per request, so ``re``'s cache never hits and each upload paid
0.3-0.7 ms of CPU for them (about a tenth of a submit's). :class:`BoundaryDecoder` finds the
boundary with ``bytes.find`` and checks what surrounds it by hand, matching exactly what the
expressions match (``tests/web/test_multipart.py`` compares both on generated bodies).

werkzeug's ``MultiPartParser.parse`` makes its decoder by the module-level name
``werkzeug.formparser.MultipartDecoder``; :func:`install` points that name here, once.
"""

from __future__ import annotations

from typing import Any

import werkzeug.formparser
from werkzeug.sansio.multipart import MultipartDecoder

#: werkzeug's ``[^\S\n\r]``: whitespace other than a line break (bytes patterns: ASCII only).
_HORIZONTAL = b" \t\x0b\x0c"


def _line_break(data: bytes | bytearray, at: int) -> int:
    """The length of werkzeug's ``LINE_BREAK`` (``\\r\\n|\\n|\\r``, in that order) at ``at``, or 0."""
    if data[at : at + 2] == b"\r\n":
        return 2
    return 1 if data[at : at + 1] in (b"\n", b"\r") else 0


class BoundaryMatch:
    """The parts of ``re.Match`` the decoder uses: ``start()``, ``end()`` and ``group(1)``."""

    __slots__ = ("_end", "_start", "_tail")

    def __init__(self, start: int, end: int, tail: bytes) -> None:
        self._start, self._end, self._tail = start, end, tail

    def start(self) -> int:
        return self._start

    def end(self) -> int:
        return self._end

    def group(self, index: int) -> bytes:
        if index != 1:
            raise IndexError("only group 1 is kept")
        return self._tail


class BoundaryFinder:
    """``search`` as werkzeug's ``boundary_re`` (``LINE_BREAK--B(--H*LINE_BREAK?|H*LINE_BREAK)``)
    answers it, or its ``preamble_re`` (the same with the leading line break optional)."""

    def __init__(self, boundary: bytes, *, leading_break_optional: bool) -> None:
        self.delimiter = b"--" + boundary
        self.optional = leading_break_optional

    def search(self, data: bytes | bytearray, pos: int = 0) -> BoundaryMatch | None:
        found = data.find(self.delimiter, pos)
        while found != -1:
            start = self._start(data, found, pos)
            if start is not None and (match := self._tail(data, start, found + len(self.delimiter))):
                return match
            found = data.find(self.delimiter, found + 1)
        return None

    def _start(self, data: bytes | bytearray, found: int, pos: int) -> int | None:
        """Where a match whose delimiter is at ``found`` starts: the leftmost line break that
        ends right there (``\\r\\n`` over ``\\n``), else the delimiter itself if the break is optional."""
        if found - 2 >= pos and data[found - 2 : found] == b"\r\n":
            return found - 2
        if found - 1 >= pos and data[found - 1 : found] in (b"\n", b"\r"):
            return found - 1
        return found if self.optional else None

    def _tail(self, data: bytes | bytearray, start: int, after: int) -> BoundaryMatch | None:
        end = after
        closing = data[end : end + 2] == b"--"
        if closing:
            end += 2
        while data[end : end + 1] and data[end] in _HORIZONTAL:
            end += 1
        line_break = _line_break(data, end)
        if not closing and not line_break:
            return None
        end += line_break
        return BoundaryMatch(start, end, bytes(data[after:end]))


class BoundaryDecoder(MultipartDecoder):
    """werkzeug's decoder with :class:`BoundaryFinder` in place of its two compiled expressions."""

    def __init__(
        self, boundary: bytes, max_form_memory_size: int | None = None, *, max_parts: int | None = None
    ) -> None:
        # A constant boundary: werkzeug compiles its expressions once (re's cache), then they are replaced.
        super().__init__(b"imgsvc", max_form_memory_size, max_parts=max_parts)
        self.boundary = boundary
        self.preamble_re: Any = BoundaryFinder(boundary, leading_break_optional=True)
        self.boundary_re: Any = BoundaryFinder(boundary, leading_break_optional=False)


def install() -> None:
    """Have werkzeug's form parser build :class:`BoundaryDecoder` (idempotent)."""
    werkzeug.formparser.MultipartDecoder = BoundaryDecoder  # type: ignore[misc]
