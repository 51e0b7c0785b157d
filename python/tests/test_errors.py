"""msp.errors: the exception classes of the library's status codes and the errcheck that raises them."""

import numpy as np
import pytest

import msp
from msp import _lib, errors
from msp._lib import DTYPE_F32, lib


@pytest.mark.parametrize("cls, status, builtin", [
    (msp.InvalidArgumentError, 1, ValueError),
    (msp.OutOfMemoryError, 2, MemoryError),
    (msp.InfeasibleError, 3, ValueError),
    (msp.MSPCancelled, 4, RuntimeError),
    (msp.InvalidStateError, 5, RuntimeError),
    (msp.InternalError, 6, RuntimeError),
])
def test_error_classes(cls, status, builtin):
    assert issubclass(cls, msp.MSPError) and issubclass(cls, builtin)
    error = errors.error_for_status(status, "detail")
    assert type(error) is cls and error.status == status and error.message == "detail"
    assert str(error) == "detail"
    assert _lib.status_string(status) != "unknown status"


def test_unknown_status_is_internal():
    error = errors.error_for_status(99, "")
    assert type(error) is msp.InternalError and error.status == 99 and str(error)
    assert _lib.status_string(99) == "unknown status"


def test_errcheck_carries_message_and_success_clears_it():
    w = np.ones((2, 8), np.float32)
    with pytest.raises(msp.InvalidArgumentError, match=r"m \(64\)") as info:
        lib.msp_nm_prune(w.ctypes.data, DTYPE_F32, 2, 8, 2, 64, None, None)
    assert info.value.status == 1
    assert _lib.last_error_message() == info.value.message
    assert lib.msp_nm_prune(w.ctypes.data, DTYPE_F32, 2, 8, 2, 4, None, None) is None
    assert lib.msp_last_error_message() == b""
    assert _lib.last_error_message() == ""
