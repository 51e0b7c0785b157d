"""The :class:`Pruner`'s store of pruned weights, one entry per (layer, level): a search's database.

A search applies hundreds of plans that differ in a few layers; with a store of every layer already
pruned at every level it needs, a candidate plan is assembled by copies. The store keeps entries in
memory up to a byte budget (least recently used dropped first) and, with ``cache_dir``, on disk,
where a later run (another :class:`Pruner`, another process) finds them again.

Disk format: one file ``<key>.npz`` per entry (numpy's zip of ``.npy`` arrays, read with
``allow_pickle=False``) holding ``weight`` (the pruned weight's bits as ``int16``/``int32``
``[rows, cols]``, so bfloat16 survives), ``key`` (the file's key again) and ``digest`` (BLAKE2b-256
of the weight's bytes). The key is the BLAKE2b-256 of everything the entry depends on: the format
version, the dense weight's dtype, shape and bytes, the criterion and its statistic's bytes (for
SparseGPT the Gram matrix, ``damp`` and ``block``; for Wanda the norms and the scope), and the
level. A changed weight, statistic, setting or level gives another key, so a stale entry is never
read. Files are written to a temporary name in the same folder and renamed (atomic on POSIX); a
file that does not load, holds another key, shape or dtype, or whose digest does not match (a
truncated or corrupted file) is ignored, counted in :attr:`Database.rejected`, and rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..levels import Level

__all__ = ["Database", "digest_of"]

_FORMAT = b"msp-pruned-weight-v1"
_BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def digest_of(*parts: object) -> bytes:
    """BLAKE2b-256 of ``parts``: bytes, numpy arrays, CPU tensors (their raw bytes, with dtype and
    shape) or anything else by its ``repr``."""
    h = hashlib.blake2b(digest_size=32)
    for part in parts:
        if isinstance(part, torch.Tensor):
            t = part.detach().cpu().contiguous()
            h.update(repr((str(t.dtype), tuple(t.shape))).encode())
            part = (t.view(_BITS[t.dtype]) if t.dtype in _BITS else t).numpy()
        if isinstance(part, np.ndarray):
            h.update(repr((part.dtype.str, part.shape)).encode())
            part = np.ascontiguousarray(part).tobytes()
        if not isinstance(part, bytes):
            part = repr(part).encode()
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.digest()


def _bits(weight: torch.Tensor) -> np.ndarray:
    """The weight's bits as an integer array on the host (bfloat16 has no numpy dtype)."""
    return weight.detach().cpu().contiguous().view(_BITS[weight.dtype]).numpy()


class Database:
    """Pruned weights by (layer index, level): an LRU in memory of at most ``limit`` bytes and,
    with ``cache_dir``, files a later run reuses (see the module docstring).

    Args:
        limit: bytes of pruned weights held in memory (0: none; the disk still serves).
        keep: makes the copy held in memory (on the weights' device or the host).
        cache_dir: None, or a folder (created when missing) for the entries on disk.
    """

    def __init__(self, limit: int, keep: Callable[[torch.Tensor], torch.Tensor], cache_dir: str | os.PathLike | None):
        self._memory: OrderedDict[tuple[int, Level], torch.Tensor] = OrderedDict()
        self._limit = limit
        self._keep = keep
        self._dir = None if cache_dir is None else Path(cache_dir)
        if self._dir is not None:
            self._dir.mkdir(parents=True, exist_ok=True)
        self.bytes = 0
        """Bytes held in memory now."""
        self.rejected = 0
        """Disk files ignored (and rebuilt) because they did not load or did not match."""
        self.disk_hits = 0
        """Entries read from disk."""

    @property
    def cache_dir(self) -> Path | None:
        """The folder of the entries on disk, or None."""
        return self._dir

    def get(self, index: int, level: Level, key: Callable[[], bytes], like: torch.Tensor) -> torch.Tensor | None:
        """The pruned weight of (``index``, ``level``) from memory, else from disk (then also held
        in memory), else None. ``key()`` gives the disk key; ``like`` the weight (shape, dtype)."""
        held = self._memory.get((index, level))
        if held is not None:
            self._memory.move_to_end((index, level))
            return held
        if self._dir is None:
            return None
        loaded = self._load(key().hex(), like)
        if loaded is None:
            return None
        self.disk_hits += 1
        return self._hold(index, level, loaded)

    def put(self, index: int, level: Level, key: Callable[[], bytes] | None, weight: torch.Tensor) -> None:
        """Store the pruned ``weight`` of (``index``, ``level``): in memory (within the budget) and,
        with a folder and ``key``, on disk."""
        if self._dir is not None and key is not None:
            self._save(key().hex(), weight)
        self._hold(index, level, weight)

    def held(self, index: int, level: Level) -> bool:
        """True when the entry is in memory now."""
        return (index, level) in self._memory

    def clear(self) -> None:
        """Drop the entries in memory (files on disk stay)."""
        self._memory.clear()
        self.bytes = 0

    def _hold(self, index: int, level: Level, weight: torch.Tensor) -> torch.Tensor:
        size = weight.numel() * weight.element_size()
        if size > self._limit:
            return weight
        while self.bytes + size > self._limit:
            _, dropped = self._memory.popitem(last=False)
            self.bytes -= dropped.numel() * dropped.element_size()
        copy = self._keep(weight)
        self._memory[(index, level)] = copy
        self.bytes += size
        return copy

    def _save(self, key: str, weight: torch.Tensor) -> None:
        bits = _bits(weight)
        digest = np.frombuffer(digest_of(bits.tobytes()), dtype=np.uint8)
        fd, tmp = tempfile.mkstemp(dir=self._dir, prefix=f".{key[:16]}-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, weight=bits, key=np.frombuffer(key.encode(), dtype=np.uint8), digest=digest)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._dir / f"{key}.npz")
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _load(self, key: str, like: torch.Tensor) -> torch.Tensor | None:
        path = self._dir / f"{key}.npz"
        if not path.is_file():
            return None
        expected = np.dtype(np.int32 if like.element_size() == 4 else np.int16)
        try:
            with np.load(path, allow_pickle=False) as z:
                bits, stored, digest = z["weight"], z["key"].tobytes().decode(), z["digest"].tobytes()
            ok = (stored == key and bits.dtype == expected and tuple(bits.shape) == tuple(like.shape)
                  and digest == digest_of(np.ascontiguousarray(bits).tobytes()))
        except Exception:  # a truncated or garbled file: whatever numpy or zipfile raise
            ok = False
        if not ok:
            self.rejected += 1
            return None
        return torch.from_numpy(np.ascontiguousarray(bits)).view(like.dtype)

