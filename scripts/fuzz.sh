#!/usr/bin/env bash
# Builds the libFuzzer targets in Tests/Fuzz and runs each for a bounded time.
#
# The library is built once more into its own scratch path with AddressSanitizer and libFuzzer's
# coverage instrumentation (swiftc -sanitize=address -sanitize=fuzzer; a library gets no fuzzer
# main), and each harness is linked against it with clang -fsanitize=fuzzer,address,undefined.
# Swift's own checks (integer overflow, bounds, force unwraps) stay on in -c release, so a trap in
# the library shows up as a crash of the target.
#
# usage: scripts/fuzz.sh [--build-only] [target ...]   (targets: masking fisher planning search checkpoint cost_table packed obs;
#                                                      default: all)
# env:   FUZZ_SECONDS   seconds per target (default 60)
#        FUZZ_BUILD     scratch folder (default .build-fuzz): fuzz/<target> binaries, corpus/<target>
#                       (the growing working corpus), artifacts/<target>/ (crash-*, leak-*, timeout-*),
#                       logs/<target>.log
#        SWIFT, CLANG   the toolchain (default: swift on PATH and the clang next to it)
# Replay a crash:      .build-fuzz/fuzz/fuzz_<target> .build-fuzz/artifacts/<target>/crash-...
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET=${FUZZ_SECONDS:-60}
BUILD=${FUZZ_BUILD:-.build-fuzz}
SWIFT=${SWIFT:-swift}
CLANG=${CLANG:-$(dirname "$(readlink -f "$(command -v "$SWIFT")")")/clang}
ALL_TARGETS=(masking fisher planning search checkpoint cost_table packed obs)

build_only=0
targets=()
for arg in "$@"; do
    case "$arg" in
    --build-only) build_only=1 ;;
    *) targets+=("$arg") ;;
    esac
done
[ ${#targets[@]} -gt 0 ] || targets=("${ALL_TARGETS[@]}")

cpu_flags=()
if [ "$(uname -m)" = x86_64 ]; then
    cpu_flags=(-Xswiftc -target-cpu -Xswiftc haswell -Xcc -march=x86-64-v3)
fi

echo "== building libmsp.so with ASan + fuzzer coverage into $BUILD"
"$SWIFT" build -c release --scratch-path "$BUILD" --product msp --sanitize address -Xswiftc -sanitize=fuzzer \
    "${cpu_flags[@]}"
libdir=$(cd "$BUILD/release" && pwd)

mkdir -p "$BUILD/fuzz" "$BUILD/logs"
for t in "${targets[@]}"; do
    src=Tests/Fuzz/fuzz_$t.c
    [ -f "$src" ] || { echo "no fuzz target $t ($src)" >&2; exit 2; }
    bin=$BUILD/fuzz/fuzz_$t
    if [ ! -x "$bin" ] || [ "$src" -nt "$bin" ] || [ Tests/Fuzz/fuzz_common.h -nt "$bin" ] ||
        [ include/msp.h -nt "$bin" ] || [ "$libdir/libmsp.so" -nt "$bin" ]; then
        echo "== compiling $bin"
        # ld.gold warns about ASan's local symbols it cannot export; those warnings are noise.
        "$CLANG" -g -O1 -Wall -Wextra -Werror -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
            -Iinclude "$src" -L"$libdir" -lmsp -Wl,-rpath,"$libdir" -o "$bin" 2>&1 |
            { grep -v -e "ld.gold: warning: Cannot export local symbol" || true; }
    fi
done
[ $build_only -eq 0 ] || exit 0

# A single-threaded OpenBLAS, so that msp_obs_prune splits its rows across msp's threads (it keeps
# them on the calling thread next to a multithreaded OpenBLAS) and fuzz_obs compares 1 and 2 threads.
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
# Swift's crash handler would race ASan's report: let libFuzzer and ASan report traps.
export SWIFT_BACKTRACE=enable=no
export ASAN_OPTIONS=${ASAN_OPTIONS:-quarantine_size_mb=64:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

failed=()
summary=()
for t in "${targets[@]}"; do
    corpus=$BUILD/corpus/$t artifacts=$BUILD/artifacts/$t log=$BUILD/logs/$t.log
    mkdir -p "$corpus" "$artifacts" "Tests/Fuzz/corpus/$t"
    echo "== fuzz_$t for ${SECONDS_PER_TARGET}s (log: $log)"
    status=ok
    # New inputs go to the first folder (the working corpus); the seeds in the repo are only read.
    if ! "$BUILD/fuzz/fuzz_$t" -max_total_time="$SECONDS_PER_TARGET" -timeout=30 -rss_limit_mb=3072 \
        -max_len=16384 -print_final_stats=1 -artifact_prefix="$artifacts/" "$corpus" "Tests/Fuzz/corpus/$t" \
        >"$log" 2>&1; then
        status=FAILED
        failed+=("$t")
        grep -E -A40 "ERROR|fuzz check failed|runtime error|Fatal error" "$log" | head -60 || tail -40 "$log"
        echo "reproducer(s): $(ls -t "$artifacts" | head -3 | sed "s|^|$artifacts/|" | tr '\n' ' ')"
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
    summary+=("$(printf '%-12s %12s runs %6ss  %s' "$t" "${runs:-?}" "${secs:-?}" "$status")")
done

echo "== fuzz summary"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]}" >&2
    exit 1
fi
