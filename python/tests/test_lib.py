"""msp._lib: the loader, the declaration table, and the C entry points called raw through ctypes."""

import ctypes
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import msp
from msp import _lib
from msp._lib import DTYPE_BF16, DTYPE_F16, DTYPE_F32, lib

from conftest import PYTHON_DIR, REPO_DIR

HEADER = REPO_DIR / "include" / "msp.h"


def header_functions():
    """Names of the functions declared in include/msp.h."""
    text = re.sub(r"/\*.*?\*/", "", HEADER.read_text(), flags=re.S)
    return set(re.findall(r"\b(msp_[a-z0-9_]+)\s*\(", text))


# --- loader and declarations -----------------------------------------------------------------------


def test_abi_and_version():
    assert lib.msp_abi_version() == msp.ABI_VERSION == 1
    macros = dict(re.findall(r"#define MSP_VERSION_(MAJOR|MINOR|PATCH) (\d+)", HEADER.read_text()))
    header_version = f"{macros['MAJOR']}.{macros['MINOR']}.{macros['PATCH']}"
    assert msp.version() == msp.__version__ == header_version
    package = subprocess.run([sys.executable, "setup.py", "--version"], cwd=PYTHON_DIR, capture_output=True,
                             text=True, check=True)
    assert package.stdout.strip().splitlines()[-1] == header_version
    abi = re.search(r"#define MSP_ABI_VERSION (\d+)", HEADER.read_text()).group(1)
    assert int(abi) == msp.ABI_VERSION


def test_abi_mismatch_names_both_versions():
    with pytest.raises(ImportError, match=r"ABI version 2.*ABI version 1"):
        _lib._check_abi(2, "/some/libmsp.so")


def test_declaration_table_covers_the_header():
    declared = [name for name, _, _ in _lib._DECLARATIONS]
    assert len(declared) == len(set(declared))
    assert set(declared) == header_functions()


def test_every_declared_function_is_bound():
    for name, _, _ in _lib._DECLARATIONS:
        assert isinstance(getattr(lib, name), ctypes._CFuncPtr), name


def test_search_order(monkeypatch):
    monkeypatch.delenv("MSP_LIBRARY_PATH", raising=False)
    paths = _lib._candidates()
    assert paths[0] == str(PYTHON_DIR / "msp" / "lib" / "libmsp.so")
    assert paths[1] == str(REPO_DIR / ".build" / "release" / "libmsp.so")
    monkeypatch.setenv("MSP_LIBRARY_PATH", "/x/libmsp.so")
    assert _lib._candidates() == ["/x/libmsp.so"]


def _import_msp(env_update):
    env = dict(os.environ, **env_update)
    code = "import msp; print(msp.__version__)"
    return subprocess.run([sys.executable, "-c", code], cwd=PYTHON_DIR, env=env, capture_output=True, text=True)


def test_missing_library_lists_paths_tried():
    result = _import_msp({"MSP_LIBRARY_PATH": "/nonexistent/libmsp.so"})
    assert result.returncode != 0
    assert "OSError" in result.stderr and "/nonexistent/libmsp.so (not found)" in result.stderr


def test_unloadable_library_reports_loader_error(tmp_path):
    fake = tmp_path / "libmsp.so"
    fake.write_bytes(b"not an ELF file")
    result = _import_msp({"MSP_LIBRARY_PATH": str(fake)})
    assert result.returncode != 0 and str(fake) in result.stderr


def _fake_library(tmp_path, source, dependency=None):
    """A libmsp.so compiled from ``source``; linked against libmsptestdep.so compiled from
    ``dependency`` when given."""
    compiler = shutil.which("cc") or shutil.which("clang") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler")
    link = []
    if dependency is not None:
        (tmp_path / "dep.c").write_text(dependency)
        dep = tmp_path / "libmsptestdep.so"
        subprocess.run([compiler, "-shared", "-fPIC", str(tmp_path / "dep.c"), "-o", str(dep)], check=True)
        link = [f"-L{tmp_path}", "-lmsptestdep"]
    (tmp_path / "fake.c").write_text(source)
    library = tmp_path / "libmsp.so"
    subprocess.run([compiler, "-shared", "-fPIC", str(tmp_path / "fake.c"), "-o", str(library)] + link, check=True)
    return library


def test_a_missing_dependency_is_named_instead_of_libmsp(tmp_path):
    """libmsp.so exists but a library it needs does not: the message names that library first
    (the dynamic loader's own words), not a missing libmsp.so."""
    source = "int msp_test_dependency(void);\nint msp_abi_version(void) { return msp_test_dependency(); }\n"
    library = _fake_library(tmp_path, source, dependency="int msp_test_dependency(void) { return 1; }\n")
    (tmp_path / "libmsptestdep.so").unlink()
    result = _import_msp({"MSP_LIBRARY_PATH": str(library)})
    assert result.returncode != 0 and "OSError" in result.stderr
    assert "libmsp.so was found, but the dynamic loader cannot load libmsptestdep.so, which it needs" in result.stderr
    assert f"{library} (libmsptestdep.so: cannot open shared object file" in result.stderr
    assert "build it with `make lib`" not in result.stderr


def test_the_load_failure_message_names_what_is_missing():
    error = OSError("libopenblas.so.0: cannot open shared object file: No such file or directory")
    assert _lib.missing_dependency("/site/msp/lib/libmsp.so", error) == "libopenblas.so.0"
    assert _lib.missing_dependency("libmsp.so", OSError("libmsp.so: cannot open shared object file: x")) is None
    assert _lib.missing_dependency("/x/libmsp.so", OSError("/x/libmsp.so: invalid ELF header")) is None
    broken = OSError("/lib/x86_64-linux-gnu/libopenblas.so.0: file too short")  # present but unusable
    assert _lib.missing_dependency("/x/libmsp.so", broken) == "/lib/x86_64-linux-gnu/libopenblas.so.0"
    old = OSError("/lib/libstdc++.so.6: version `GLIBCXX_3.4.99' not found (required by /x/libmsp.so)")
    assert _lib.missing_dependency("/x/libmsp.so", old) == "/lib/libstdc++.so.6"
    message = _lib.load_failure(["/a/libmsp.so (libopenblas.so.0: cannot open ...)"], ["libopenblas.so.0"] * 2)
    assert message.startswith("msp: libmsp.so was found, but the dynamic loader cannot load libopenblas.so.0, which")
    assert "apt-get install libopenblas0" in message
    assert message.endswith("tried:\n  /a/libmsp.so (libopenblas.so.0: cannot open ...)")
    assert "apt-get" not in _lib.load_failure(["/a/libmsp.so (...)"], ["/lib/libstdc++.so.6"])
    assert _lib.load_failure(["/b (not found)"], []).startswith("msp: cannot load libmsp.so (build it with `make lib`")


def test_abi_mismatch_fails_the_import(tmp_path):
    library = _fake_library(tmp_path, "int msp_abi_version(void) { return 2; }\n")
    result = _import_msp({"MSP_LIBRARY_PATH": str(library)})
    assert result.returncode != 0 and "ImportError" in result.stderr
    assert "ABI version 2" in result.stderr and "ABI version 1" in result.stderr


def test_missing_symbols_fail_the_import_naming_them(tmp_path):
    library = _fake_library(tmp_path, "int msp_abi_version(void) { return 1; }\nint msp_nm_mask(void) { return 0; }\n")
    result = _import_msp({"MSP_LIBRARY_PATH": str(library)})
    assert result.returncode != 0 and "ImportError" in result.stderr
    assert "msp_topk_prune" in result.stderr and "msp_search_run" in result.stderr
    assert "msp_nm_mask," not in result.stderr


def test_library_without_abi_function_is_rejected(tmp_path):
    library = _fake_library(tmp_path, "int unrelated(void) { return 0; }\n")
    result = _import_msp({"MSP_LIBRARY_PATH": str(library)})
    assert result.returncode != 0 and "does not export msp_abi_version" in result.stderr


def test_import_does_not_import_torch():
    code = "import sys, msp, numpy as np; msp.prune_nm_(np.ones((1, 4), np.float32), 2, 4); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=PYTHON_DIR, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


# --- raw C entry points ---------------------------------------------------------------------------


def _sentinel(size):
    return np.full(size, 0xAB, np.uint8)


@pytest.mark.parametrize("rows, cols, match", [
    (2**62, 4, "overflows"),
    (4, 2**62, "overflows"),
    (2**61, 2**61, "overflows"),
    (2**60, 4, "too large"),   # 2**62 elements fit int64, their bytes do not
    (-1, 4, "rows"),
    (0, 4, "rows"),
    (4, 0, "cols"),
    (-(2**63), 4, "rows"),
])
def test_bad_sizes_are_rejected_before_touching_memory(rows, cols, match):
    w = np.arange(1, 17, dtype=np.float32).reshape(4, 4)
    before = w.copy()
    mask = _sentinel(16)
    calls = [
        lambda: lib.msp_nm_mask(w.ctypes.data, DTYPE_F32, rows, cols, 2, 4, mask.ctypes.data),
        lambda: lib.msp_nm_prune(w.ctypes.data, DTYPE_F32, rows, cols, 2, 4, None, mask.ctypes.data),
        lambda: lib.msp_topk_prune(w.ctypes.data, DTYPE_F32, rows, cols, 0.5, 0, None, mask.ctypes.data),
        lambda: lib.msp_topk_prune(w.ctypes.data, DTYPE_F16, rows, cols, 0.5, 1, None, mask.ctypes.data),
    ]
    for call in calls:
        with pytest.raises(msp.InvalidArgumentError, match=match):
            call()
    np.testing.assert_array_equal(w, before)
    assert (mask == 0xAB).all()


def test_null_pointers():
    w = np.ones((2, 4), np.float32)
    mask = _sentinel(8)
    with pytest.raises(msp.InvalidArgumentError, match="scores is NULL"):
        lib.msp_nm_mask(None, DTYPE_F32, 2, 4, 2, 4, mask.ctypes.data)
    with pytest.raises(msp.InvalidArgumentError, match="keep_mask_out is NULL"):
        lib.msp_nm_mask(w.ctypes.data, DTYPE_F32, 2, 4, 2, 4, None)
    with pytest.raises(msp.InvalidArgumentError, match="weights is NULL"):
        lib.msp_nm_prune(None, DTYPE_F32, 2, 4, 2, 4, None, mask.ctypes.data)
    with pytest.raises(msp.InvalidArgumentError, match="weights is NULL"):
        lib.msp_topk_prune(0, DTYPE_BF16, 2, 4, 0.5, 0, None, mask.ctypes.data)
    assert (mask == 0xAB).all() and (w == 1).all()
    # NULL col_scale and NULL keep_mask_out are allowed for the pruning functions.
    lib.msp_topk_prune(w.ctypes.data, DTYPE_F32, 2, 4, 0.5, 1, None, None)
    assert (w == 0).sum() == 4


@pytest.mark.parametrize("dtype", [7, 3, -1, 2**31 - 1])
def test_unknown_dtype(dtype):
    w = np.ones((2, 4), np.float32)
    mask = _sentinel(8)
    for call in (
        lambda: lib.msp_nm_mask(w.ctypes.data, dtype, 2, 4, 2, 4, mask.ctypes.data),
        lambda: lib.msp_nm_prune(w.ctypes.data, dtype, 2, 4, 2, 4, None, mask.ctypes.data),
        lambda: lib.msp_topk_prune(w.ctypes.data, dtype, 2, 4, 0.5, 0, None, mask.ctypes.data),
    ):
        with pytest.raises(msp.InvalidArgumentError, match=rf"dtype \({dtype}\)"):
            call()
    assert (mask == 0xAB).all() and (w == 1).all()


@pytest.mark.parametrize("scope", [2, -1, 99])
def test_unknown_scope(scope):
    w = np.ones((2, 4), np.float32)
    with pytest.raises(msp.InvalidArgumentError, match="scope"):
        lib.msp_topk_prune(w.ctypes.data, DTYPE_F32, 2, 4, 0.5, scope, None, None)
    assert (w == 1).all()


def test_nan_in_last_row_leaves_mask_and_weights_unchanged():
    w = np.arange(1, 4097, dtype=np.float32).reshape(64, 64)
    w[63, 60] = np.nan
    before = w.tobytes()
    mask = _sentinel(w.size)
    for call in (
        lambda: lib.msp_nm_prune(w.ctypes.data, DTYPE_F32, 64, 64, 2, 4, None, mask.ctypes.data),
        lambda: lib.msp_topk_prune(w.ctypes.data, DTYPE_F32, 64, 64, 0.5, 1, None, mask.ctypes.data),
        lambda: lib.msp_nm_mask(w.ctypes.data, DTYPE_F32, 64, 64, 2, 4, mask.ctypes.data),
    ):
        with pytest.raises(msp.InvalidArgumentError, match=r"\[63\]\[60\] is NaN"):
            call()
    assert w.tobytes() == before and (mask == 0xAB).all()


def test_struct_layouts_match_the_header(tmp_path):
    """sizeof and every field offset of the header's structs, from a C compiler, equal ctypes'."""
    compiler = shutil.which("cc") or shutil.which("clang") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler")
    structs = [(name, cls) for name, cls in vars(_lib).items()
               if isinstance(cls, type) and issubclass(cls, ctypes.Structure) and name.startswith("msp_")]
    assert {name for name, _ in structs} == set(re.findall(r"typedef struct (msp_\w+) \{", HEADER.read_text()))
    lines = []
    for name, cls in structs:
        lines.append(f'printf("{name} %zu\\n", sizeof({name}));')
        for field, _ in cls._fields_:
            lines.append(f'printf("{name}.{field} %zu\\n", offsetof({name}, {field}));')
    source = tmp_path / "layout.c"
    source.write_text('#include <stddef.h>\n#include <stdio.h>\n#include "msp.h"\nint main(void) {\n'
                      + "\n".join(lines) + "\nreturn 0;\n}\n")
    binary = tmp_path / "layout"
    subprocess.run([compiler, "-I", str(REPO_DIR / "include"), str(source), "-o", str(binary)], check=True)
    measured = dict(line.split() for line in subprocess.run([str(binary)], capture_output=True, text=True,
                                                            check=True).stdout.splitlines())
    for name, cls in structs:
        assert int(measured[name]) == ctypes.sizeof(cls), name
        for field, _ in cls._fields_:
            assert int(measured[f"{name}.{field}"]) == getattr(cls, field).offset, f"{name}.{field}"


def test_callback_types_accept_a_null_callback():
    assert not _lib.msp_progress_fn()
    assert _lib.msp_progress_fn.from_param(_lib.msp_progress_fn()) is not None


@pytest.mark.parametrize("name, cls", [("msp_search_params_default", "msp_search_params"),
                                       ("msp_prior_params_default", "msp_prior_params")])
def test_params_defaults_carry_their_struct_size(name, cls):
    if not hasattr(_lib.dll, name):
        pytest.skip(f"{name} is not exported yet")
    params = getattr(lib, name)()
    assert params.struct_size == ctypes.sizeof(getattr(_lib, cls))
