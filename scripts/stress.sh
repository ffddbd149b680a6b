#!/usr/bin/env bash
# Run the test suite (or part of it) many times the way CI meets it: a fresh clone of the
# committed tree, a cold page cache, bytecode not written, the other CPUs busy.
#
#   scripts/stress.sh [-n RUNS] [-m MINUTES] [-f] [-k] [-- PYTEST_ARGS...]
#   make stress STRESS_ARGS="-n 20 -- tests/test_benchmarks_smoke.py"
#
#   -n RUNS      at most this many runs (default 10)
#   -m MINUTES   stop starting runs after this long (default 60)
#   -f           a fresh venv for every run (`make test` exactly as .ci/run; ~1.5 min more
#                each); otherwise one fresh venv is made for this invocation and shared
#   -k           keep the work directory even when every run passed
#   PYTEST_ARGS  what to run (default: the whole suite, as `make test`)
#
# Prints one line per run (pass/fail, seconds) and a summary; a failed run's output is
# kept in the work directory.  Dropping the page cache needs root; without it, the runs
# are only warm-cache runs (said in the output).
set -uo pipefail
runs=10 minutes=60 fresh=0 keep=0
while getopts "n:m:fkh" opt; do
  case $opt in
    n) runs=$OPTARG ;; m) minutes=$OPTARG ;; f) fresh=1 ;; k) keep=1 ;;
    *) sed -n '2,20p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ "${1:-}" = "--" ] && shift
src=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
commit=$(git -C "$src" rev-parse --short HEAD)
work=$(mktemp -d "${TMPDIR:-/tmp}/bgwlab-stress-XXXXXX")
ncpu=$(nproc)
hogs=()
cleanup() {
  for p in "${hogs[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT TERM
for ((i = 1; i < ncpu; i++)); do  # every CPU but one busy: the suite gets the rest
  python3 -c 'while True: pass' & hogs+=($!)
done
echo "stress: commit $commit, up to $runs runs / $minutes min, $((ncpu - 1)) of $ncpu CPUs busy," \
     "work dir $work"
[ "$(id -u)" -eq 0 ] || echo "stress: not root: the page cache cannot be dropped (warm-cache runs)"
export PYTHONDONTWRITEBYTECODE=1 CI=true
shared_venv="$work/venv"
end=$(($(date +%s) + minutes * 60))
pass=0 fail=0
for ((n = 1; n <= runs; n++)); do
  [ "$(date +%s)" -lt "$end" ] || { echo "stress: time is up"; break; }
  dir="$work/run$n"
  git clone -q "$src" "$dir"
  if [ "$fresh" -eq 1 ]; then venv=(); else venv=("VENV=$shared_venv"); fi
  if [ "$fresh" -eq 0 ] && [ ! -e "$shared_venv/.installed-stamp" ]; then
    make -C "$dir" -s setup "${venv[@]}" >"$work/setup.log" 2>&1 || { echo "stress: setup failed ($work/setup.log)"; exit 1; }
  fi
  if [ "$(id -u)" -eq 0 ]; then sync; echo 3 >/proc/sys/vm/drop_caches; fi
  t0=$(date +%s)
  if [ $# -gt 0 ]; then
    cmd=(make -C "$dir" -s setup system-deps "${venv[@]}")
    "${cmd[@]}" >"$dir/stress.log" 2>&1
    py=${venv[0]#VENV=}; py=${py:-$dir/.venv}/bin/python
    (cd "$dir" && timeout 5400 "$py" -m pytest -p no:cacheprovider "$@") >>"$dir/stress.log" 2>&1
  else
    timeout 5400 make -C "$dir" -s test "${venv[@]}" >"$dir/stress.log" 2>&1
  fi
  rc=$?
  secs=$(($(date +%s) - t0))
  if [ $rc -eq 0 ]; then
    pass=$((pass + 1)); echo "run $n: pass  ${secs} s"
    rm -rf "$dir"
  else
    fail=$((fail + 1)); echo "run $n: FAIL  ${secs} s  (exit $rc; $dir/stress.log)"
    grep -E "^(FAILED|ERROR) |Error:|did not" "$dir/stress.log" | head -5 | sed 's/^/    /'
  fi
done
echo "stress: $pass passed, $fail failed (commit $commit)"
if [ $fail -eq 0 ] && [ $keep -eq 0 ]; then rm -rf "$work"; fi
[ $fail -eq 0 ]
