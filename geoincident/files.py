"""Reading the small files the configuration names, with a size limit.

A path that points at the wrong file (a log, a disk image, /dev/zero) must fail at start with
a message naming the file, not fill the memory: every file read at load goes through here.
"""

from __future__ import annotations

import os
from pathlib import Path

KIB = 1024
MIB = 1024 * KIB
# a secret (password, API key, Bearer tokens): one line or a few
MAX_SECRET_FILE_BYTES = 64 * KIB


class FileTooLarge(OSError):
    """A file over the limit its reader sets; the message names the file and the limit."""


def read_bounded(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    """The whole content of `path`, which may be at most `max_bytes` long (FileTooLarge if it
    is longer; OSError if it cannot be read). Never reads more than `max_bytes + 1` bytes."""
    with Path(path).open("rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise FileTooLarge(f"{os.fspath(path)} is larger than {max_bytes:,} bytes")
    return data


def read_bounded_text(path: str | os.PathLike[str], max_bytes: int) -> str:
    """`read_bounded`, decoded as UTF-8 (UnicodeDecodeError when it is not)."""
    return read_bounded(path, max_bytes).decode("utf-8")
