#!/usr/bin/env bash
# The wheel, built as the README says (`pip wheel ./python`), must be a manylinux wheel that bundles
# libopenblas and libgfortran and works in a fresh virtual environment without the system's copies:
#  1. build it; its tag must be manylinux and msp.libs/ must hold libopenblas and libgfortran;
#  2. install it (with numpy from PyPI) into a fresh venv and run scripts/check_wheel.py there from a
#     directory outside the checkout: it prunes and reads /proc/self/maps to check that the bundled
#     copies, not the system's, are loaded;
#  3. run the same check again in a private mount namespace (`unshare -m`, needs root) where every
#     system copy of libopenblas.so.0, libgfortran.so.5 and libquadmath.so.0 that ldconfig knows is
#     hidden (/dev/null mounted over it), as on a machine without libopenblas; as a control, the
#     build tree's libmsp.so must then fail to load with msp's loader naming libopenblas.so.0.
# Without the right to unshare, step 3 is reported as not run and steps 1-2 still decide.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PYTHON=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$PYTHON" -m pip wheel -q --no-deps -w "$work/dist" ./python
wheel=$(ls "$work"/dist/msp-*.whl)
echo "test-wheel: built $(basename "$wheel")"
case "$(basename "$wheel")" in
    *-py3-none-manylinux_*) ;;
    *) echo "test-wheel: not a manylinux wheel: $wheel" >&2; exit 1 ;;
esac
contents=$("$PYTHON" -m zipfile -l "$wheel")
for stem in libopenblas libgfortran; do
    grep -q "msp.libs/$stem" <<< "$contents" || { echo "test-wheel: the wheel does not bundle $stem" >&2; exit 1; }
done

"$PYTHON" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q "$wheel"
cd "$work"  # away from the checkout, so that only the installed package can be imported
env -u MSP_LIBRARY_PATH -u PYTHONPATH "$work/venv/bin/python" "$REPO/scripts/check_wheel.py"

if ! unshare -m true 2>/dev/null; then
    echo "test-wheel: NOT RUN: the check with the system libraries hidden (unshare -m needs root)"
    exit 0
fi
mapfile -t hidden < <(ldconfig -p | awk '$1 ~ /^lib(openblas\.so\.0|gfortran\.so\.5|quadmath\.so\.0)$/ { print $NF }' \
                      | xargs -r realpath | sort -u)
[ ${#hidden[@]} -gt 0 ] || echo "test-wheel: ldconfig knows no system libopenblas, libgfortran or libquadmath"
unshare -m bash -euo pipefail -c '
    venv=$1 repo=$2; shift 2
    for library in "$@"; do mount --bind /dev/null "$library"; done
    env -u MSP_LIBRARY_PATH -u PYTHONPATH "$venv/bin/python" "$repo/scripts/check_wheel.py"
    if output=$(MSP_LIBRARY_PATH="$repo/.build/release/libmsp.so" "$venv/bin/python" -c "import msp" 2>&1); then
        echo "test-wheel: the build tree libmsp.so still loads with the system libraries hidden" >&2; exit 1
    fi
    grep -q "the dynamic loader cannot load [^ ]*libopenblas.so.0, which it needs" <<< "$output" || {
        echo "test-wheel: the loader did not name libopenblas.so.0:" >&2; echo "$output" >&2; exit 1; }
    echo "test-wheel: with $# system libraries hidden the wheel still works;" \
         "the build tree libmsp.so fails, naming libopenblas.so.0"
' hide "$work/venv" "$REPO" "${hidden[@]}"
