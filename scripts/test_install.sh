#!/usr/bin/env bash
# `make install` into a temporary prefix, then the C example (examples/c/prune_example.c) built from
# that prefix the two ways the README gives, as C99 with warnings as errors (and once more as C++
# with pkg-config):
#   1. explicit flags: -I$PREFIX/include ... -L$PREFIX/lib -lmsp -Wl,-rpath,$PREFIX/lib
#   2. pkg-config:     $(pkg-config --cflags --libs msp) with PKG_CONFIG_PATH=$PREFIX/lib/pkgconfig
# Each program must resolve libmsp.so to the installed copy (ldd) and run successfully; msp.pc's
# version must be the header's.
set -euo pipefail
cd "$(dirname "$0")/.."
CC=${CC:-cc}
prefix=$(mktemp -d)
trap 'rm -rf "$prefix"' EXIT

make -s install PREFIX="$prefix"
for file in include/msp.h lib/libmsp.so lib/pkgconfig/msp.pc; do
    [ -f "$prefix/$file" ] || { echo "test-install: $prefix/$file was not installed" >&2; exit 1; }
done
cmp -s include/msp.h "$prefix/include/msp.h"

export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
header_version=$(sed -n 's/^#define MSP_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\)$/\2/p' include/msp.h | paste -sd.)
pc_version=$(pkg-config --modversion msp)
[ "$pc_version" = "$header_version" ] || {
    echo "test-install: msp.pc has version $pc_version, msp.h $header_version" >&2; exit 1; }

warnings=(-Wall -Wextra -Werror -pedantic)
"$CC" -std=c99 "${warnings[@]}" -I"$prefix/include" examples/c/prune_example.c \
    -L"$prefix/lib" -lmsp -Wl,-rpath,"$prefix/lib" -o "$prefix/prune_example_flags"
# shellcheck disable=SC2046  # pkg-config's output is meant to be split into words
"$CC" -std=c99 "${warnings[@]}" examples/c/prune_example.c $(pkg-config --cflags --libs msp) \
    -o "$prefix/prune_example_pkgconfig"
# shellcheck disable=SC2046
"${CXX:-c++}" -x c++ -std=c++11 "${warnings[@]}" examples/c/prune_example.c $(pkg-config --cflags --libs msp) \
    -o "$prefix/prune_example_cxx"

for program in prune_example_flags prune_example_pkgconfig prune_example_cxx; do
    resolved=$(ldd "$prefix/$program" | awk '$1 == "libmsp.so" { print $3 }')
    [ "$resolved" = "$prefix/lib/libmsp.so" ] || {
        echo "test-install: $program loads libmsp.so from '$resolved', not $prefix/lib" >&2; exit 1; }
    (cd "$prefix" && env -u LD_LIBRARY_PATH "./$program" > /dev/null)
    echo "test-install: $program built from the installed prefix, loads $resolved, runs"
done
