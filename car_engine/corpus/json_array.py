"""A streaming decoder for JSON-array corpora: element by element, bounded memory, and a file
cut off part-way still yields its whole elements (the ShareGPT dump is such a file)."""

from __future__ import annotations

import codecs
import io
import json
import re
import zlib
from collections.abc import Iterator
from typing import Any

from car_engine.corpus.records import BadItem, BetweenItems, UnreadableFile

_JSON_CHUNK = 1 << 20
# What a damaged or cut-short (gzipped) file raises while it is being read.
STREAM_ERRORS = (EOFError, OSError, zlib.error)
_JSON_WS = re.compile(r"[ \t\r\n]*")


class _TextWindow:
    """A sliding window of decoded text over a byte stream, refilled on demand.

    Invalid UTF-8 bytes become lone surrogates (``surrogateescape``), so an item holding them
    is rejected by name instead of stopping the whole file."""

    def __init__(self, stream: io.BufferedIOBase) -> None:
        self.stream = stream
        self.text = ""
        self.pos = 0
        self.eof = False
        self.error: BaseException | None = None  # why the stream ended early, if it did
        self._decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self._started = False

    def fill(self) -> bool:
        """Read more text (at least as much as is held, so re-parsing stays linear); False at
        the end of the stream."""
        if self.eof:
            return False
        chunk = self._read(max(_JSON_CHUNK, len(self.text) - self.pos))
        if chunk:
            text = self._decoder.decode(chunk)
        else:
            self.eof = True
            text = self._decoder.decode(b"", final=True)
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        self.text = self.text[self.pos:] + text
        self.pos = 0
        return bool(chunk)

    def _read(self, want: int) -> bytes:
        # read1 piece by piece: a cut-short gzip stream raises from read(), dropping what that
        # call had already decompressed; pieces read before the error are kept here.
        pieces, got = [], 0
        while got < want and self.error is None:
            try:
                piece = self.stream.read1(want - got)
            except STREAM_ERRORS as err:
                self.error = err
                break
            if not piece:
                break
            pieces.append(piece)
            got += len(piece)
        return b"".join(pieces)

    def peek(self) -> str | None:
        """The next non-whitespace character (consuming the whitespace), or None at the end."""
        while True:
            blank = _JSON_WS.match(self.text, self.pos)
            assert blank is not None  # the pattern matches the empty string too
            self.pos = blank.end()
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self.fill():
                return None

    def ended_early(self, when: str) -> str:
        """Why the text stopped ``when`` it did ("before item 3 is complete")."""
        if self.error is not None:
            return f"file is cut short or corrupt ({self.error}) {when}"
        return f"file ends {when}"


def _needs_more_text(err: json.JSONDecodeError, length: int) -> bool:
    # A value cut by the window's end fails at (or a few characters before) the end, or as a
    # string with no closing quote; any other failure is malformed JSON.
    return err.pos >= length - 8 or err.msg.startswith("Unterminated string")


_JSON_WORDS = ("true", "false", "null", "NaN", "Infinity", "-Infinity")
# What is left of a \uXXXX escape (or a surrogate pair of them) that the text cut short.
_CUT_ESCAPE = re.compile(r"u[0-9a-fA-F]{0,4}(\\\\(u[0-9a-fA-F]{0,3})?)?")


# Characters that can go on a number: "1." or "2e" is a number the text cut short.
_NUMBER_TAIL = re.compile(r"[0-9.eE+\-]*")


def _is_cut_off(err: json.JSONDecodeError) -> bool:
    """At the end of the text: did the value fail only because the text stopped?"""
    rest = err.doc[err.pos:].rstrip()
    if err.msg.startswith("Invalid \\uXXXX escape"):
        return _CUT_ESCAPE.fullmatch(rest) is not None
    return (err.msg.startswith("Unterminated string") or _NUMBER_TAIL.fullmatch(rest) is not None
            or any(w.startswith(rest) for w in _JSON_WORDS))


def json_array_items(stream: io.BufferedIOBase) -> Iterator[tuple[str, Any]]:
    """Decode a JSON array element by element, so a file cut off part-way still yields its
    whole elements (the ShareGPT dump is such a file) and memory stays bounded."""
    decoder = json.JSONDecoder()
    window = _TextWindow(stream)
    first = window.peek()
    if first is None:
        if window.error is not None:
            yield "item 0", UnreadableFile(window.ended_early("before any item could be read"))
        return  # an empty file holds no items
    if first != "[":
        yield "item 0", UnreadableFile("a .json corpus must be a JSON array of objects")
        return
    window.pos += 1
    index = 0
    while True:
        here = f"item {index}"
        next_char = window.peek()
        if next_char == "]":
            return
        if index > 0 and next_char == ",":
            window.pos += 1
            next_char = window.peek()
            if next_char == "]":  # [a, b,]: two items and a stray comma, not a third item
                yield f"item {index - 1}", BetweenItems(
                    "malformed JSON: a trailing comma after this item (the item itself is read)")
                return
        elif index > 0 and next_char is not None:
            yield here, BadItem(f"malformed JSON: expected ',' or ']' after item {index - 1}; "
                                 "the rest of the file cannot be read")
            return
        if next_char is None:
            yield here, BadItem(window.ended_early("before the array is closed"))
            return
        while True:
            try:
                item, end = decoder.raw_decode(window.text, window.pos)
            except json.JSONDecodeError as err:
                if _needs_more_text(err, len(window.text)) and window.fill():
                    continue
                if window.error is not None or _is_cut_off(err):
                    reason = window.ended_early(f"before {here} is complete")
                else:
                    reason = f"malformed JSON ({err.msg}); the rest of the file cannot be read"
                yield here, BadItem(reason)
                return
            except RecursionError:
                yield here, BadItem("malformed JSON: nested too deeply; "
                                     "the rest of the file cannot be read")
                return
            except ValueError as err:  # e.g. an integer longer than Python converts
                yield here, BadItem(f"malformed JSON: {err}; the rest of the file cannot be read")
                return
            # A number ending where the window ends ("12" of "123", "0" of "0.5") may go on in
            # the next chunk.
            if _NUMBER_TAIL.fullmatch(window.text, end) and window.fill():
                continue
            break
        window.pos = end
        yield here, item
        index += 1

