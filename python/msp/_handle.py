"""``NativeHandle``: the base of the classes that own one native ``libmsp`` handle."""

from __future__ import annotations

import threading
from typing import Any, Callable, TypeVar

from .errors import InvalidStateError

_H = TypeVar("_H", bound="NativeHandle")


class NativeHandle:
    """Owns one native pointer: ``close()``, context manager, and a ``__del__`` safe at shutdown.

    A subclass sets the class attributes ``_free`` (the library's free function, wrapped in
    ``staticmethod``) and ``_name`` (the object's name in "... is closed" messages), calls
    ``super().__init__()`` first and stores the created pointer in ``self._handle``.
    ``self._lock`` (re-entrant) serialises ``close()``; subclasses may hold it across calls too.
    """

    _free: Callable[[int], Any]
    _name: str
    _handle: int | None = None

    def __init__(self) -> None:
        self._lock = threading.RLock()

    def _ptr(self) -> int:
        """The live handle; raises ``msp.InvalidStateError`` after ``close()``."""
        handle = self._handle
        if handle is None:
            raise InvalidStateError(f"{self._name} is closed")
        return handle

    def close(self) -> None:
        """Release the native handle. Idempotent; later calls raise ``msp.InvalidStateError``."""
        with self._lock:
            handle, self._handle = self._handle, None
        if handle is not None:
            self._free(handle)

    @property
    def closed(self) -> bool:
        """True after ``close()``."""
        return self._handle is None

    def __enter__(self: _H) -> _H:
        with self._lock:
            self._ptr()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        # Safe during interpreter shutdown and after a failed __init__.
        handle = self._handle
        if handle is not None:
            self._handle = None
            try:
                self._free(handle)
            except Exception:  # the library may already be unloaded
                pass
