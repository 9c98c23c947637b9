#!/usr/bin/env bash
# Memory safety, proven by tools: build the C++ unit tests and the Python extension with AddressSanitizer and
# UndefinedBehaviorSanitizer (CMake option RNNFAST_SANITIZE), run CTest and the pytest suite under them, and fail
# on any sanitizer report (every sanitizer error aborts the process that hit it, which fails its test run).
#
#   scripts/sanitize.sh              # everything (C++ tests, then the Python suite): one build of both
#   scripts/sanitize.sh cpp          # C++ tests only
#   scripts/sanitize.sh python       # Python suite only
#   JOBS=1 scripts/sanitize.sh       # build with one job (default 2)
#   PYTEST_ARGS="tests/test_robustness.py" scripts/sanitize.sh python
#   SANITIZE_SKIP_INSTALL=1 scripts/sanitize.sh python   # reuse the instrumented venv (and build) as they are
#   SANITIZE_BUILD_ONLY=1 scripts/sanitize.sh            # build, run nothing (then SANITIZE_SKIP_INSTALL=1 runs)
#
# Builds go to build/sanitize/ (C++ tests alone: build/sanitize/cpp; extension: build/sanitize/py, installed into
# the venv build/sanitize/venv), apart from the normal builds. Everything (the default) builds the C++ tests in the
# extension's build, build/sanitize/py, linked to the core of its first level (RNNFAST_TESTS_LEVEL): the sanitized
# core takes most of a build's time, and is compiled once; `cpp` alone tests the core of RNNFAST_ARCH, as CTest's
# normal build does. Compiled at -O1 -g1 (AddressSanitizer's recommended optimization; line tables put file:line in
# reports): about half the compile time of -O2 -g. Needs a C++17 compiler with libasan/libubsan (gcc or clang),
# CMake, Ninja, GoogleTest (libgtest-dev) and Eigen for the C++ tests; pip reaches PyPI for the extension's build
# requirements. CPython leaks by design, so the Python run has leak detection off; the C++ tests have it on.
set -euo pipefail
cd "$(dirname "$0")/.."

what="${1:-all}"
jobs="${JOBS:-2}"
out="build/sanitize"
python="${PYTHON:-python3}"
t0=$SECONDS
phase() { echo "== sanitize: $* ($((SECONDS - t0)) s)"; }

# A report must not be lost with the output of the process it aborts: pytest runs with --capture=sys (reports go
# to the real stderr), and ASan also writes them to files, any of which fails the run (UBSan, inside the ASan
# runtime, ignores log_path: its reports are on stderr).
reports="$PWD/$out/reports"
rm -rf "$reports"
mkdir -p "$reports"
common_asan="halt_on_error=1:abort_on_error=1:detect_stack_use_after_return=1:check_initialization_order=1"
common_asan+=":strict_init_order=1:print_summary=1:log_path=$reports/asan"
export UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1:report_error_type=1:log_path=$reports/ubsan"

# Fails (exit 1) when a sanitizer wrote a report, printing it; else returns the status it was given.
check_reports() {
  local status="$1" found=0
  for f in "$reports"/*; do
    [[ -e "$f" ]] || continue
    found=1
    echo "== sanitize: REPORT $f" >&2
    cat "$f" >&2
  done
  if ((found)); then exit 1; fi
  if ((status != 0)); then exit "$status"; fi
}

# RelWithDebInfo's flags, lighter: see the header.
build_flags="-O1 -g1 -DNDEBUG"
levels="${SANITIZE_LEVELS:-baseline}"  # one instruction-set level by default (e.g. "baseline;avx2"): the same code
first_level="${levels%%;*}"
first_level="${first_level%%=*}"

built() {
  if [[ -n "${SANITIZE_BUILD_ONLY:-}" ]]; then
    phase "built (SANITIZE_BUILD_ONLY: no test run)"
    exit 0
  fi
}

# LeakSanitizer needs ptrace-like access that some containers forbid; SANITIZE_CPP_LEAKS=0 turns it off there.
run_ctest() {
  phase "run the C++ tests ($1)"
  local status=0
  ASAN_OPTIONS="$common_asan:detect_leaks=${SANITIZE_CPP_LEAKS:-1}" \
    ctest --test-dir "$1" --output-on-failure --no-tests=error -j "$jobs" || status=$?
  check_reports "$status"
}

if [[ "$what" == cpp ]]; then
  phase "configure and build the C++ tests"
  cmake -S . -B "$out/cpp" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="$build_flags" -DRNNFAST_SANITIZE=ON -DRNNFAST_BUILD_TESTS=ON \
        -DRNNFAST_BUILD_BENCHMARKS=OFF -DRNNFAST_BUILD_PYTHON=OFF >/dev/null
  cmake --build "$out/cpp" -j "$jobs"
  built
  run_ctest "$out/cpp"
fi

if [[ "$what" == all || "$what" == python ]]; then
  if [[ -z "${SANITIZE_SKIP_INSTALL:-}" || ! -x "$out/venv/bin/python" ]]; then
    if [[ "$what" == all ]]; then
      phase "build the extension and the C++ tests ($out/py), install the extension into $out/venv"
    else
      phase "build the extension into $out/venv"
    fi
    if [[ ! -x "$out/venv/bin/python" ]]; then
      "$python" -m venv "$out/venv"
    fi
    "$out/venv/bin/python" -m pip install -q --upgrade pip >/dev/null
    with_tests=()
    if [[ "$what" == all ]]; then
      with_tests=(-C cmake.define.RNNFAST_BUILD_TESTS=ON -C "cmake.define.RNNFAST_TESTS_LEVEL=$first_level")
    else
      with_tests=(-C cmake.define.RNNFAST_BUILD_TESTS=OFF -C cmake.define.RNNFAST_TESTS_LEVEL=)
    fi
    CMAKE_BUILD_PARALLEL_LEVEL="$jobs" "$out/venv/bin/python" -m pip install -q ".[test]" \
      -C cmake.define.RNNFAST_SANITIZE=ON -C cmake.build-type=RelWithDebInfo -C build-dir="$out/py" \
      -C "cmake.define.CMAKE_CXX_FLAGS_RELWITHDEBINFO=$build_flags" \
      -C "cmake.define.RNNFAST_ISA_LEVELS=$levels" "${with_tests[@]}"
  fi
  built
  if [[ "$what" == all ]]; then
    run_ctest "$out/py"
  fi
  # The interpreter is not instrumented: the ASan runtime must be loaded first, from the compiler that built _core.
  # libstdc++ is preloaded too: ASan resolves its __cxa_throw interceptor at startup, and the interpreter does not
  # load libstdc++ by itself, so without it the first C++ exception aborts ("real___cxa_throw != 0" CHECK).
  cxx="${CXX:-c++}"
  libasan="$("$cxx" -print-file-name=libasan.so)"
  libstdcxx="$("$cxx" -print-file-name=libstdc++.so.6)"
  for lib in "$libasan" "$libstdcxx"; do
    if [[ ! -e "$lib" ]]; then
      echo "sanitize: cannot find $lib for $cxx" >&2
      exit 2
    fi
  done
  phase "run the pytest suite under ASan+UBSan (LD_PRELOAD=$libasan:$libstdcxx)"
  status=0
  # shellcheck disable=SC2086
  LD_PRELOAD="$libasan:$libstdcxx" RNNFAST_SANITIZED=1 \
  ASAN_OPTIONS="$common_asan:detect_leaks=0" \
    "$out/venv/bin/python" -m pytest -q -p no:cacheprovider --capture=sys ${PYTEST_ARGS:-} || status=$?
  check_reports "$status"
  # Guard against a silently uninstrumented build making "no report" meaningless.
  phase "check the extension really is instrumented"
  for so in "$out"/venv/lib/python*/site-packages/rnnfast/_core*.so; do
    # (grep without -q: under pipefail, -q would stop reading early and nm's SIGPIPE would fail the pipe)
    if ! nm -D "$so" | grep "__asan_" >/dev/null; then
      echo "sanitize: $so is not built with AddressSanitizer" >&2
      exit 1
    fi
  done
fi

phase "done: no sanitizer report"
