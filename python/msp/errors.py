"""Exceptions raised for the library's status codes (``msp_status`` in ``include/msp.h``).

Every exception carries ``.status`` (the C status code) and ``.message`` (the library's detail from
``msp_last_error_message()``). Each class also derives from the built-in exception that fits, so
``except ValueError`` catches a bad argument from either Python or the library.
"""

from __future__ import annotations

from typing import Any

# Status codes, pinned in include/msp.h.
OK = 0
ERR_INVALID_ARGUMENT = 1
ERR_OUT_OF_MEMORY = 2
ERR_INFEASIBLE = 3
ERR_CANCELLED = 4
ERR_INVALID_STATE = 5
ERR_INTERNAL = 6


class MSPError(Exception):
    """Base of every error reported by the msp library.

    Attributes:
        status: the ``msp_status`` code returned by the C function.
        message: the library's message for this error.
    """

    status: int = ERR_INTERNAL

    def __init_subclass__(cls, status: int | None = None, **kwargs: Any) -> None:
        # A subclass names its status code: ``class X(MSPError, ValueError, status=ERR_...)``.
        super().__init_subclass__(**kwargs)
        if status is not None:
            cls.status = status

    def __init__(self, message: str = "", status: int | None = None) -> None:
        if status is not None:
            self.status = status
        self.message = message
        super().__init__(message)


class InvalidArgumentError(MSPError, ValueError, status=ERR_INVALID_ARGUMENT):
    """A NULL pointer, bad size, dtype or pattern, or NaN data (``MSP_ERR_INVALID_ARGUMENT``)."""


class OutOfMemoryError(MSPError, MemoryError, status=ERR_OUT_OF_MEMORY):
    """The library could not allocate scratch memory (``MSP_ERR_OUT_OF_MEMORY``)."""


class InfeasibleError(MSPError, ValueError, status=ERR_INFEASIBLE):
    """No plan meets the requested budget and bounds (``MSP_ERR_INFEASIBLE``)."""


class MSPCancelled(MSPError, RuntimeError, status=ERR_CANCELLED):
    """A callback asked the library to stop (``MSP_ERR_CANCELLED``)."""


class InvalidStateError(MSPError, RuntimeError, status=ERR_INVALID_STATE):
    """A call came out of order on a handle (``MSP_ERR_INVALID_STATE``)."""


class InternalError(MSPError, RuntimeError, status=ERR_INTERNAL):
    """A bug in msp (``MSP_ERR_INTERNAL``, or a status this binding does not know)."""


# Every exception class, the base first; ``msp`` re-exports them all.
_EXCEPTIONS: tuple[type[MSPError], ...] = (
    MSPError,
    InvalidArgumentError,
    OutOfMemoryError,
    InfeasibleError,
    MSPCancelled,
    InvalidStateError,
    InternalError,
)

_BY_STATUS: dict[int, type[MSPError]] = {cls.status: cls for cls in _EXCEPTIONS[1:]}


def error_for_status(status: int, message: str) -> MSPError:
    """Return the exception for a non-zero ``status`` carrying ``message``.

    An unknown status becomes an ``InternalError`` whose ``.status`` is that value.
    """
    cls = _BY_STATUS.get(status, InternalError)
    if not message:
        message = f"msp status {status}"
    return cls(message, status)


__all__ = [cls.__name__ for cls in _EXCEPTIONS] + ["error_for_status"]
