"""Run by scripts/test_wheel.sh with the python of a fresh virtual environment that holds msp's
wheel and numpy only: msp must import from that environment, prune (checked against numpy code
here), compute a BLAS-backed cost (checked likewise), and use the OpenBLAS, libgfortran and
libquadmath the wheel bundles in ``msp.libs/``, never a system copy (read from /proc/self/maps).
Prints one line and exits 0 when all holds."""

import os
import sys
from pathlib import Path

import numpy as np

import msp

site = Path(msp.__file__).resolve().parent.parent
assert Path(msp._lib.path).resolve() == site / "msp" / "lib" / "libmsp.so", msp._lib.path

# 2:4 pruning in place: the two largest |w| of every 4 stay (a stable sort keeps the lower index on ties).
rng = np.random.default_rng(0)
dense = rng.standard_normal((16, 32)).astype(np.float32)
w = dense.copy()
keep = msp.prune_nm_(w, 2, 4)
groups = np.abs(dense).reshape(16, 8, 4)
kept = np.argsort(-groups, axis=-1, kind="stable")[..., :2]
reference = np.zeros(groups.shape, bool)
np.put_along_axis(reference, kept, True, axis=-1)
reference = reference.reshape(16, 32)
assert np.array_equal(keep, reference) and np.array_equal(w, np.where(reference, dense, 0))

# The reconstruction cost tr(dW H dW^T) goes through OpenBLAS: 50 % (per row) and 1:4 of one row.
row = np.array([[1, -2, 3, -4]], np.float32)
x = rng.standard_normal((8, 4)).astype(np.float32)
gram = (x.T @ x).astype(np.float32)
costs = msp.cost_table(row, [0.5, "1:4"], kind="reconstruction", gram=gram)
for cost, delta in zip(costs, ([1, -2, 0, 0], [1, -2, 3, 0])):
    d = np.array(delta, np.float64)
    assert abs(cost - d @ gram.astype(np.float64) @ d) <= 1e-4 * abs(cost), (costs, delta)

libraries = {line.split()[-1] for line in open("/proc/self/maps") if line.rstrip().split()[-1].startswith("/")}
bundled = site / "msp.libs"
for stem in ("libopenblas", "libgfortran", "libquadmath"):
    paths = sorted(p for p in libraries if os.path.basename(p).startswith(stem))
    assert any(p.startswith(f"{bundled}/") for p in paths), f"no bundled {stem} loaded: {paths}"
    system = [p for p in paths if not p.startswith(f"{site}/")]
    assert not system, f"a system {stem} is loaded: {system}"
print(f"check_wheel: msp {msp.__version__} from {site} prunes, uses {', '.join(sorted(os.listdir(bundled)))} "
      f"(python {sys.version.split()[0]})")
