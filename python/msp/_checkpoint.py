"""The file format of ``msp.Search.save`` / ``msp.Search.load``, and atomic file replacement.

A search file holds the native checkpoint (``msp_search_save``: the whole search state, with its
own checks) and the Python side's description of it as JSON (sizes, level set, target, seed,
settings, the history of best fitness, the caller's ``note``)::

    8 bytes   magic b"MSPYSRCH"
    4 bytes   format version (little-endian uint32), FORMAT_VERSION
    8 bytes   length J of the JSON (little-endian uint64)
    J bytes   JSON, UTF-8
    ...       the native checkpoint (the rest up to the last 32 bytes)
    32 bytes  SHA-256 of every byte before it

``unpack`` checks the framing and the hash and returns the JSON object and the native bytes; the
library then checks the native bytes again when it loads them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from typing import Any

from .errors import InvalidArgumentError

MAGIC = b"MSPYSRCH"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sIQ")
_DIGEST = 32


def pack(meta: dict, native: bytes) -> bytes:
    """The file contents for a JSON-ready ``meta`` and the native checkpoint bytes."""
    text = json.dumps(meta, allow_nan=False, separators=(",", ":")).encode("utf-8")
    body = _HEADER.pack(MAGIC, FORMAT_VERSION, len(text)) + text + native
    return body + hashlib.sha256(body).digest()


def unpack(data: bytes, name: str) -> tuple[dict, bytes]:
    """The JSON object and the native bytes of a search file's contents.

    Raises:
        msp.InvalidArgumentError: not a search file, another format version, truncated or
            corrupted data (the message names ``name`` and the problem).
    """

    def fail(why: str) -> InvalidArgumentError:
        return InvalidArgumentError(f"{name} is not a valid msp search file: {why}")

    if len(data) < _HEADER.size + _DIGEST:
        raise fail(f"{len(data)} bytes is shorter than the smallest search file")
    magic, version, length = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise fail("the magic bytes differ")
    if version != FORMAT_VERSION:
        raise fail(f"format version {version}, this package reads version {FORMAT_VERSION}")
    if hashlib.sha256(data[:-_DIGEST]).digest() != data[-_DIGEST:]:
        raise fail("the SHA-256 does not match (truncated or corrupted)")
    if length > len(data) - _HEADER.size - _DIGEST:
        raise fail(f"the JSON length ({length}) runs past the end of the data")
    try:
        meta = json.loads(data[_HEADER.size : _HEADER.size + length].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise fail(f"its JSON does not parse: {error}") from None
    if not isinstance(meta, dict):
        raise fail("its JSON is not an object")
    return meta, bytes(data[_HEADER.size + length : -_DIGEST])


class Fields:
    """Typed reads of a search file's JSON object: ``Fields(meta, name)(key, kind)`` is
    ``meta[key]``, which must be an instance of ``kind`` (a bool is never an int here)."""

    def __init__(self, meta: dict, name: str) -> None:
        self._meta, self._name = meta, name

    def __call__(self, key: str, kind: Any) -> Any:
        value = self._meta.get(key)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind not in (bool, (bool,))):
            raise InvalidArgumentError(f"{self._name} is not a valid msp search file: its field {key!r} is {value!r}")
        return value


def encode_float(value: float) -> Any:
    """A float for JSON, which has no infinity: +inf and -inf as the strings "inf" and "-inf"."""
    return value if math.isfinite(value) else str(value)


def decode_float(value: Any, name: str, key: str) -> float:
    """The float of ``encode_float`` in the field ``key`` of the file ``name``."""
    if value in ("inf", "-inf") or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return float(value)
    raise InvalidArgumentError(f"{name} is not a valid msp search file: its field {key!r} holds {value!r}")


def write_atomically(path: str | os.PathLike, data: bytes) -> None:
    """Replace the file at ``path`` with ``data`` so that a reader, or the file after a crash, is
    either the old file or the new one, never a mix: write a temporary file in the same folder,
    flush it to disk, then ``os.replace`` it over ``path``."""
    path = os.fspath(path)
    temporary = f"{path}.tmp{os.getpid()}"
    try:
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
