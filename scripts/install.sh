#!/usr/bin/env bash
# Installs msp for C and C++ users (`make install PREFIX=...` runs it after `make lib`):
#   $DESTDIR$PREFIX/include/msp.h, $DESTDIR$PREFIX/lib/libmsp.so, $DESTDIR$PREFIX/lib/pkgconfig/msp.pc
# msp.pc's Version is MSP_VERSION_MAJOR.MINOR.PATCH of msp.h, and its Libs carry
# -Wl,-rpath,${libdir}: a program linked with them finds libmsp.so where it was installed, with no
# LD_LIBRARY_PATH and no ldconfig (PREFIX/lib is usually not on the loader's default path).
# DESTDIR (optional) stages the files elsewhere, as packagers do; msp.pc still names PREFIX.
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${PREFIX:?set PREFIX to an absolute path}
DESTDIR=${DESTDIR:-}
case "$PREFIX" in
    /*) ;;
    *) echo "install: PREFIX must be an absolute path, got '$PREFIX'" >&2; exit 1 ;;
esac

macro() { sed -n "s/^#define MSP_VERSION_$1 \([0-9][0-9]*\)\$/\1/p" include/msp.h; }
version="$(macro MAJOR).$(macro MINOR).$(macro PATCH)"
[[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || { echo "install: no version macros in include/msp.h" >&2; exit 1; }

root="$DESTDIR$PREFIX"
install -d "$root/include" "$root/lib/pkgconfig"
install -m 644 include/msp.h "$root/include/msp.h"
install -m 755 .build/release/libmsp.so "$root/lib/libmsp.so"
cat > "$root/lib/pkgconfig/msp.pc" <<PC
prefix=$PREFIX
includedir=\${prefix}/include
libdir=\${prefix}/lib

Name: msp
Description: Mixed-sparsity planner for LLM pruning: N:M and top-k masks, Fisher traces, per-layer plans
Version: $version
Cflags: -I\${includedir}
Libs: -L\${libdir} -lmsp -Wl,-rpath,\${libdir}
PC
echo "installed msp $version into $root (include/msp.h, lib/libmsp.so, lib/pkgconfig/msp.pc)"
