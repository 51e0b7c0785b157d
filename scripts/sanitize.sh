#!/usr/bin/env bash
# Runs the test suites under sanitizers, each build in its own scratch folder.
#
#   address  the Swift tests (MSPCoreTests, MSPTests) with AddressSanitizer, LeakSanitizer included
#            (.build-asan). swiftc has no UndefinedBehaviorSanitizer on Linux; Swift's own overflow,
#            bounds and unwrap checks stay on in -c release and trap instead.
#   thread   the tests that run kernels on several threads or touch one handle from several
#            threads, with ThreadSanitizer (.build-tsan).
#   python   the Python tests against the ASan build of libmsp.so, with the ASan runtime preloaded
#            into python (leak checking off: CPython and torch keep memory to the end by design;
#            huge allocations return NULL, as without ASan, for the tests of 4 EiB claimed sizes).
#
# usage: scripts/sanitize.sh [address] [thread] [python]   (default: all three)
# env:   SWIFT, CLANG, PYTHON; SANITIZE_TSAN_FILTER (regular expression of the thread tests)
set -euo pipefail
cd "$(dirname "$0")/.."

SWIFT=${SWIFT:-swift}
CLANG=${CLANG:-$(dirname "$(readlink -f "$(command -v "$SWIFT")")")/clang}
PYTHON=${PYTHON:-python3}
TSAN_FILTER=${SANITIZE_TSAN_FILTER:-'[Tt]hread|[Cc]oncurren'}
modes=("$@")
[ ${#modes[@]} -gt 0 ] || modes=(address thread python)

cpu_flags=()
if [ "$(uname -m)" = x86_64 ]; then
    cpu_flags=(-Xswiftc -target-cpu -Xswiftc haswell -Xcc -march=x86-64-v3)
fi
# Swift's crash handler would race the sanitizer's report.
export SWIFT_BACKTRACE=enable=no

for mode in "${modes[@]}"; do
    case "$mode" in
    address)
        echo "== Swift tests under AddressSanitizer"
        ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:halt_on_error=1} \
            LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/scripts/lsan.supp:print_suppressions=0} \
            "$SWIFT" test -c release --scratch-path .build-asan --sanitize address "${cpu_flags[@]}"
        ;;
    thread)
        echo "== concurrency tests under ThreadSanitizer (filter: $TSAN_FILTER)"
        TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1} \
            "$SWIFT" test -c release --scratch-path .build-tsan --sanitize thread "${cpu_flags[@]}" \
            --filter "$TSAN_FILTER"
        ;;
    python)
        echo "== Python tests against an ASan build of libmsp.so"
        "$SWIFT" build -c release --scratch-path .build-asan --product msp --sanitize address "${cpu_flags[@]}"
        runtime=$("$CLANG" -print-file-name=libclang_rt.asan-x86_64.so)
        [ -f "$runtime" ] || { echo "ASan runtime not found ($runtime)" >&2; exit 2; }
        # test_resources.py bounds resident-memory growth, which under ASan measures its quarantine
        # of freed blocks (every Python allocation goes through it), not the library: leaks are the
        # Swift ASan run's (detect_leaks=1).
        (cd python && LD_PRELOAD="$runtime" MSP_LIBRARY_PATH="$PWD/../.build-asan/release/libmsp.so" \
            ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:halt_on_error=1:allocator_may_return_null=1} \
            "$PYTHON" -m pytest -q -p no:cacheprovider --ignore=tests/test_resources.py tests)
        ;;
    *)
        echo "unknown mode $mode (address, thread or python)" >&2
        exit 2
        ;;
    esac
done
