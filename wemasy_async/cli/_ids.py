"""Reading order ids for ``push``: from arguments, a file or standard input, one id at a time.

Ranges are never built as lists, and every error names the argument or the file and line, so that a typo
in a million-line file is found before anything is sent.
"""

from __future__ import annotations

import argparse
import codecs
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import IO

from .._errors import UsageError

__all__ = ["IdCount", "ids_from_lines", "max_ids_without_yes", "order_ids"]


def max_ids_without_yes() -> int:
    """The package's ``MAX_IDS_WITHOUT_YES``, read at each use so that it can be lowered (as tests do)."""
    from . import MAX_IDS_WITHOUT_YES

    return MAX_IDS_WITHOUT_YES


_ID_OR_RANGE = re.compile(r"(\d+)(?:-(\d+))?", re.ASCII)
#: Byte-order marks and the codec that reads past each (UTF-32's first: its LE mark begins with UTF-16's).
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


class IdCount:
    """Counts the ids read so far and refuses more than ``maximum`` (in one range or in all) unless
    ``allowed``. It counts whole ranges at once, before reading them, so nothing is read or sent first."""

    def __init__(self, *, allowed: bool, maximum: int | None = None, flag: str | None = "--yes") -> None:
        self.allowed = allowed
        self.maximum = max_ids_without_yes() if maximum is None else maximum
        self.flag = flag
        self.count = 0

    def add_range(self, size: int, what: str, where: str) -> None:
        if not self.allowed and size > self.maximum:
            raise UsageError(f"{what} ({where}) holds {size:,} ids, more than {self.maximum:,}{self._hint()}")
        self.count += size

    def too_many(self, where: str) -> UsageError:
        return UsageError(f"more than {self.maximum:,} ids in all (at {where}){self._hint()}")

    def _hint(self) -> str:
        return f": give {self.flag} to push them all" if self.flag else ""


def ids_from_lines(lines: Iterable[str], where: Callable[[int], str], count: IdCount) -> Iterator[int]:
    """Ids from lines of tokens such as ``12``, ``1-5000`` or ``3,4,5``, lazily (a range is never a list).

    A token that is not a positive id or a range is a UsageError naming it and ``where(line_number)``.
    """
    for number, line in enumerate(lines, 1):
        if "\x00" in line:
            raise UsageError(
                f"{where(number)} holds NUL characters: is it UTF-16 without a byte-order mark? Save it as UTF-8"
            )
        for part in line.replace(",", " ").split() if "," in line else line.split():
            if part.isdigit() and part.isascii() and len(part) < 20 and part.strip("0"):
                # One id, the common case: kept cheap for a million-line file.
                count.count += 1
                yield int(part)
            else:
                match = _ID_OR_RANGE.fullmatch(part)
                try:
                    low = int(match[1]) if match else 0
                    high = int(match[2]) if match and match[2] else low
                except ValueError:  # more digits than int() reads: no order id is that long
                    low = high = 0
                if low < 1 or high < low:
                    raise UsageError(f"not an order id or a range like 1-5000: {part!r} ({where(number)})")
                if match and match[2]:
                    count.add_range(high - low + 1, f"the range {part}", where(number))
                    if count.count > count.maximum and not count.allowed:
                        raise count.too_many(where(number))
                    yield from range(low, high + 1)
                    continue
                count.count += 1
                yield low
            if count.count > count.maximum and not count.allowed:
                raise count.too_many(where(number))


def _decoded_lines(binary: IO[bytes], name: str) -> Iterator[str]:
    """The lines of a byte stream, read in pieces: UTF-8, or the encoding its byte-order mark names.

    Bytes that do not decode are a UsageError naming ``name`` and the line, never a traceback.
    """
    head = binary.read(4)
    encoding = next((codec for bom, codec in _BOMS if head.startswith(bom)), "utf-8")
    decoder = codecs.getincrementaldecoder(encoding)("strict")
    pending, lines_done, chunk = "", 0, head
    while True:
        final = not chunk
        try:
            text = decoder.decode(chunk, final=final)
        except UnicodeDecodeError as error:
            line = lines_done + 1 + pending.count("\n") + error.object[: error.start].count(b"\n")
            raise UsageError(
                f"{name}: cannot be read as {'UTF-8' if encoding.startswith('utf-8') else encoding.upper()} text "
                f"(line {line}: {error.reason}); save it as UTF-8"
            ) from None
        pieces = (pending + text).split("\n")
        pending = pieces.pop()
        lines_done += len(pieces)
        yield from pieces
        if final:
            break
        chunk = binary.read(1 << 16)
    if pending:
        yield pending


def _file_ids(path: str, count: IdCount) -> Iterator[int]:
    try:
        with open(path, "rb") as handle:
            yield from ids_from_lines(_decoded_lines(handle, path), lambda n: f"{path}, line {n}", count)
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror or error}") from None


def _stdin_ids(count: IdCount) -> Iterator[int]:
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is not None:
        lines: Iterable[str] = _decoded_lines(buffer, "standard input")
    else:  # a text stream put in place of stdin (tests, embedding): only a leading BOM to drop
        lines = (line.lstrip("\ufeff") if n == 0 else line for n, line in enumerate(sys.stdin))
    yield from ids_from_lines(lines, lambda n: f"standard input, line {n}", count)


def order_ids(args: argparse.Namespace, count: IdCount) -> Iterator[int]:
    """Every id the command line names, in order, one at a time."""
    yield from ids_from_lines(args.ids, lambda n: f"argument {n}", count)
    if args.file == "-":
        yield from _stdin_ids(count)
    elif args.file:
        yield from _file_ids(args.file, count)
