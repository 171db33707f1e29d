"""Read user-given text files line by line, with typed errors that name ``file:line``.

Every reader of a user's data file (CoNLL-U, WinoBias, Winogender, spec JSON, the CLI's
``--file``) goes through here, so all of them agree: a path that cannot be opened is an
:class:`InvalidInput`; bytes that are not UTF-8 text (latin-1, UTF-16, a binary file) are a
:class:`DataFormatError` naming the file and the line, never a raw ``UnicodeDecodeError``
with a byte offset. A UTF-8 byte-order mark at the start is accepted and dropped, since
common Windows editors write one. Lines end at ``\\n`` (any ``\\r`` right before it belongs to the
end: ``\\r\\n``, and ``\\r\\r\\n`` from a CRLF file converted twice); a file with no ``\\n`` at all
but ``\\r`` in it is an old Mac file, whose lines end at ``\\r``. Every reader does the same.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from pathlib import Path

from attnlab.errors import DataFormatError, InvalidInput

__all__ = ["open_error", "iter_lines", "read_lines", "read_text", "decode_lines", "split_lines"]

_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
_SAVE_AS_UTF8 = "save it as UTF-8 text"


def open_error(path: Path, err: OSError, what: str) -> InvalidInput:
    """The typed error for a path that cannot be opened, naming the path and the reason."""
    if isinstance(err, FileNotFoundError):
        reason = "no such file"
    elif isinstance(err, IsADirectoryError) or path.is_dir():
        reason = "is a folder, not a file"
    elif isinstance(err, PermissionError):
        reason = "permission denied"
    else:
        reason = err.strerror or type(err).__name__
    return InvalidInput(f"{what} {path}: {reason}")


def _decode(raw: bytes, path: Path | str, lineno: int) -> str:
    if lineno == 1 and raw.startswith(_UTF16_BOMS):
        raise DataFormatError(f"{path}:1: this is UTF-16 text; {_SAVE_AS_UTF8}")
    if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    if b"\x00" in raw:  # UTF-16 without a BOM, or a binary file: valid UTF-8 bytes but not text
        raise DataFormatError(f"{path}:{lineno}: contains NUL bytes, so it is not UTF-8 text (binary or UTF-16?); {_SAVE_AS_UTF8}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        bad = raw[err.start : err.start + 4].hex(" ")
        column = len(raw[: err.start].decode("utf-8")) + 1  # everything before the first bad byte decodes
        raise DataFormatError(
            f"{path}:{lineno}: not UTF-8 text (bytes {bad} at column {column}; latin-1 or another "
            f"encoding?); {_SAVE_AS_UTF8}"
        ) from None


def _old_mac(first: bytes) -> bool:
    """The first ``\\n``-ended piece of a file tells: no ``\\n`` in it but a ``\\r``, lines end at ``\\r``."""
    return not first.endswith(b"\n") and b"\r" in first


def _split(raw: bytes, old_mac: bool) -> list[bytes]:
    if not old_mac:
        return [raw]
    lines = raw.split(b"\r")
    return lines[:-1] if lines[-1] == b"" else lines  # a final \r ends the last line


def _strip_end(line: str) -> str:
    """The line without its end: ``\\n`` and every ``\\r`` right before it (a stray ``\\r`` inside stays)."""
    return line[:-1].rstrip("\r") if line.endswith("\n") else line.rstrip("\r")


def iter_lines(path: str | Path, *, what: str = "file") -> Iterator[tuple[int, str]]:
    """``(line number, line without its end-of-line)`` for each line of a UTF-8 text file.

    Lines end as the module docstring says, as in :func:`decode_lines`, so that every reader
    sees the same lines and numbers whatever system wrote the file (a CR-only file was one long
    line before).
    ``what`` names the file in errors ("CoNLL-U file", "--file").
    """
    path = Path(path)
    try:
        handle = path.open("rb")
    except OSError as err:
        raise open_error(path, err, what) from None
    with handle:
        try:
            lineno, old_mac = 0, None
            for piece in handle:  # streamed: pieces end at \n, so a \r\n is never cut in two
                old_mac = _old_mac(piece) if old_mac is None else old_mac
                for raw in _split(piece, old_mac):
                    lineno += 1
                    yield lineno, _strip_end(_decode(raw, path, lineno))
        except IsADirectoryError as err:  # some systems open a folder and fail on the first read
            raise open_error(path, err, what) from None


def read_lines(path: str | Path, *, what: str = "file") -> list[str]:
    """Every line of a UTF-8 text file (see :func:`iter_lines`)."""
    return [line for _, line in iter_lines(path, what=what)]


def read_text(path: str | Path, *, what: str = "file") -> str:
    """The whole UTF-8 text of a file, lines joined with ``\\n`` (see :func:`iter_lines`)."""
    return "\n".join(read_lines(path, what=what))


def decode_lines(data: bytes, *, source: str) -> list[str]:
    """The lines of UTF-8 ``data`` read from elsewhere (standard input), checked like a file's."""
    pieces = data.split(b"\r" if b"\n" not in data and b"\r" in data else b"\n")  # as iter_lines decides
    if pieces[-1] == b"":  # the last line's end, not an empty line after it
        pieces.pop()
    return [_strip_end(_decode(raw, source, lineno)) for lineno, raw in enumerate(pieces, start=1)]


def split_lines(text: str) -> list[str]:
    """The lines of a text already in memory (e.g. given as a string), ended as a file's are.

    ``\\n`` ends a line, with every ``\\r`` right before it; a text with no ``\\n`` but a ``\\r``
    ends its lines at ``\\r`` (old Mac), so a string gives the lines and numbers its file would.
    """
    pieces = text.split("\r" if "\n" not in text and "\r" in text else "\n")
    if len(pieces) > 1 and pieces[-1] == "":  # the last line's end, not an empty line after it
        pieces.pop()
    return [piece.rstrip("\r") for piece in pieces]
