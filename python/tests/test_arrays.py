"""msp._arrays: the one edge between user data and the library (buffer views, float arrays of a
shape, level arrays in Level.parse's grammar, layer sizes), checked against numpy written here."""

import ctypes

import numpy as np
import pytest

import msp
from msp import _arrays
from msp._lib import DTYPE_F16, DTYPE_F32, msp_level
from msp.levels import Level

try:
    import torch
except ImportError:
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


# --- buffer views -----------------------------------------------------------------------------------


def test_matrix_views_are_zero_copy_and_describe_the_buffer():
    w = np.arange(24, dtype=np.float16).reshape(4, 6)
    view = _arrays.as_matrix(w, "weight", inplace=True)
    assert (view.ptr, view.dtype, view.rows, view.cols, view.count) == (w.ctypes.data, DTYPE_F16, 4, 6, 24)
    assert view.obj is w and view.torch is None


def test_read_only_matrices_are_copied_when_not_contiguous_and_in_place_ones_refused():
    w = np.arange(24, dtype=np.float32).reshape(6, 4).T
    view = _arrays.as_matrix(w, "scores", inplace=False)
    assert view.ptr != w.ctypes.data and (view.rows, view.cols) == (4, 6)
    copied = np.ctypeslib.as_array(ctypes.cast(view.ptr, ctypes.POINTER(ctypes.c_float)), shape=(4, 6))
    assert np.array_equal(copied, w)
    with pytest.raises(ValueError, match="never copies"):
        _arrays.as_matrix(w, "weight", inplace=True)
    frozen = np.ones((2, 4), np.float32)
    frozen.flags.writeable = False
    assert _arrays.as_matrix(frozen, "scores", inplace=False).ptr == frozen.ctypes.data
    with pytest.raises(ValueError, match="read-only"):
        _arrays.as_matrix(frozen, "weight", inplace=True)


@pytest.mark.parametrize("shape, message", [((8,), "2-D"), ((2, 2, 2), "2-D"), ((0, 4), "empty"), ((4, 0), "empty")])
def test_matrices_need_two_non_empty_dimensions(shape, message):
    with pytest.raises(ValueError, match=message):
        _arrays.as_matrix(np.zeros(shape, np.float32), "weight", inplace=False)


def test_vectors_flatten_any_shape_and_copy_only_what_is_not_contiguous():
    g = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
    view = _arrays.as_vector(g, "grad")
    assert (view.ptr, view.count, view.dtype) == (g.ctypes.data, 12, DTYPE_F32)
    strided = np.arange(20, dtype=np.float32)[::2]
    copy = _arrays.as_vector(strided, "grad")
    assert copy.ptr != strided.ctypes.data and np.array_equal(copy.obj, strided)
    assert _arrays.as_vector(np.zeros((0, 3), np.float16), "grad").count == 0


def test_outputs_are_float32_written_in_place():
    d = np.zeros((2, 3), np.float32)
    view = _arrays.as_output(d, "diag")
    assert (view.ptr, view.count) == (d.ctypes.data, 6)
    with pytest.raises(TypeError, match="float32 buffer"):
        _arrays.as_output(np.zeros(6, np.float16), "diag")
    with pytest.raises(ValueError, match="contiguous"):
        _arrays.as_output(np.zeros(12, np.float32)[::2], "diag")


@pytest.mark.parametrize("bad", [[1.0, 2.0], None, np.ones(4), np.ones(4, np.int32), np.ma.ones(4, np.float32)])
def test_views_convert_nothing(bad):
    for view in (_arrays.as_vector, _arrays.as_output):
        with pytest.raises(TypeError):
            view(bad, "x")


@needs_torch
def test_tensor_views():
    t = torch.arange(8, dtype=torch.bfloat16).reshape(2, 4)
    view = _arrays.as_matrix(t, "weight", inplace=True)
    assert view.ptr == t.data_ptr() and view.torch is torch and (view.rows, view.cols) == (2, 4)
    version = t._version
    _arrays.written(view)
    assert t._version == version + 1
    with pytest.raises(ValueError, match="requires grad"):
        _arrays.as_output(torch.zeros(3, requires_grad=True), "diag")
    with torch.no_grad():
        assert _arrays.as_output(torch.zeros(3, requires_grad=True), "diag").count == 3
    with pytest.raises(ValueError, match="device meta"):
        _arrays.as_vector(torch.ones(3, device="meta"), "grad")
    with pytest.raises(TypeError, match="layout"):
        _arrays.as_vector(torch.ones(3).to_sparse(), "grad")
    assert _arrays.as_vector(torch.ones(3, requires_grad=True), "grad").count == 3  # read-only: detached


def test_keep_masks_are_bool_views_of_one_uint8_buffer():
    view = _arrays.as_matrix(np.ones((3, 4), np.float32), "weight", inplace=False)
    mask, ptr = _arrays.new_keep_mask(view)
    assert mask.dtype == np.bool_ and mask.shape == (3, 4) and mask.ctypes.data == ptr


# --- float arrays -----------------------------------------------------------------------------------


def test_float_arrays_of_an_exact_shape():
    got = _arrays.float_array([[1, 2, 3], [4, 5, 6]], (2, 3), "table")
    assert got.dtype == np.float64 and got.flags.c_contiguous and got.tolist() == [[1, 2, 3], [4, 5, 6]]
    assert _arrays.float_array(np.arange(5), (None,), "values").tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match=r"must have shape \(2, 3\), got \(3, 2\)"):
        _arrays.float_array(np.zeros((3, 2)), (2, 3), "table")
    with pytest.raises(ValueError, match=r"must have shape \(n,\)"):
        _arrays.float_array(np.zeros((1, 3)), (None,), "values")
    with pytest.raises(TypeError, match="real numbers"):
        _arrays.float_array(["a", "b"], (2,), "values")
    with pytest.raises(TypeError, match="real numbers"):
        _arrays.float_array(np.array([True, False]), (2,), "values")


def test_float_arrays_copy_only_when_asked():
    x = np.linspace(0, 1, 6, dtype=np.float32)
    assert np.shares_memory(_arrays.float_array(x, (6,), "gram", np.float32), x)
    private = _arrays.float_array(x, (6,), "col_scale", np.float32, copy=True)
    assert not np.shares_memory(private, x) and np.array_equal(private, x)
    assert not np.shares_memory(_arrays.float_array(x, (6,), "sensitivity"), x)  # float64: converted


@needs_torch
def test_float_arrays_of_tensors_on_any_dtype():
    t = torch.tensor([0.5, 1.25, 3.0], dtype=torch.bfloat16)
    got = _arrays.float_array(t, (3,), "values")
    assert got.dtype == np.float64 and got.tolist() == [0.5, 1.25, 3.0]


def test_col_scales_are_private_float32_copies():
    w = np.ones((3, 4), np.float32)
    scale = _arrays.col_scale(w[0], 4)
    assert scale.dtype == np.float32 and not np.shares_memory(scale, w)
    assert _arrays.col_scale(None, 4) is None
    with pytest.raises(ValueError, match="col_scale"):
        _arrays.col_scale([1.0, 2.0], 4)


# --- level arrays: the grammar of Level.parse --------------------------------------------------------


class LevelLike:
    def __init__(self, sparsity, n=None, m=None):
        self.sparsity, self.n, self.m = sparsity, n, m


LEVEL_FORMS = {
    "text n:m": ["2:8", "70%"],
    "tuples": [(2, 8), 0.7],
    "lists": [[2, 8], "0.7"],
    "triples": [(0.75, 2, 8), (0.7, 0, 0)],
    "triples with None": [(0.75, 2, 8), (0.7, None, None)],
    "Level": [Level.nm(2, 8), Level.ratio(0.7)],
    "msp_level": [msp_level(0.75, 2, 8), msp_level(0.7, 0, 0)],
    "objects": [LevelLike(0.75, 2, 8), LevelLike(0.7)],
}


@pytest.mark.parametrize("form", list(LEVEL_FORMS))
def test_every_level_form_gives_the_same_native_levels(form):
    array = _arrays.level_array(LEVEL_FORMS[form])
    assert [(lv.sparsity, lv.n, lv.m) for lv in array] == [(0.75, 2, 8), (0.7, 0, 0)]


def test_cost_table_takes_pairs_and_text_alike():
    """The case of the issue: ``[(2, 8)]`` and ``["2:8"]`` are one level, 2 kept of every 8."""
    w = np.arange(1, 17, dtype=np.float32).reshape(2, 8)
    pruned = np.concatenate([w[0, :6], w[1, :6]]).astype(np.float64)  # the 6 smallest of each row
    expected = [float(np.sum(pruned**2))]
    assert msp.cost_table(w, [(2, 8)]).tolist() == expected
    assert msp.cost_table(w, ["2:8"]).tolist() == expected
    assert msp.cost_table(w, [Level.nm(2, 8)]).tolist() == expected


def test_bad_level_sets():
    with pytest.raises(TypeError):
        _arrays.level_array(None)
    with pytest.raises(TypeError):
        _arrays.level_array("2:8")
    with pytest.raises(ValueError, match="empty"):
        _arrays.level_array([])
    with pytest.raises(msp.InvalidArgumentError, match="sparsity"):
        _arrays.level_array([(0.4, 2, 4)])
    with pytest.raises(TypeError):
        _arrays.level_array([object()])


# --- layer sizes and sequences ----------------------------------------------------------------------


def test_layer_sizes():
    assert _arrays.layer_sizes(np.array([3, 2**63 - 1])) == [3, 2**63 - 1]
    assert _arrays.layer_sizes(s for s in (4, 5)) == [4, 5]
    with pytest.raises(msp.InvalidArgumentError, match="int64"):
        _arrays.layer_sizes([2**63])
    with pytest.raises(msp.InvalidArgumentError, match="empty"):
        _arrays.layer_sizes([])
    with pytest.raises(TypeError, match="iterable"):
        _arrays.layer_sizes(5)
    with pytest.raises(TypeError, match="bool"):
        _arrays.layer_sizes([True])


def test_sequences():
    assert _arrays.sequence((1, 2), "groups") == [1, 2]
    with pytest.raises(TypeError, match="sequence"):
        _arrays.sequence("ab", "groups")
    with pytest.raises(TypeError, match="sequence"):
        _arrays.sequence(3, "groups")
