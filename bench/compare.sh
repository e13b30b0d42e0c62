#!/usr/bin/env bash
# Runs the whole locksmith comparison: locksmith's rows and the Rust peers (locksmith-bench),
# then the Python peers (bench/python, in a virtual environment this script creates), then
# writes the report.
#
#   bench/compare.sh            full run (a few minutes on 2 cores): bench/RESULTS.md, bench/handoff.svg
#   bench/compare.sh --quick    smoke run (well under a minute once built): bench/out/RESULTS-quick.md
#
# Environment:
#   LOCKSMITH_REDIS_URL      Redis to measure against; default: a private redis-server on a
#                            free loopback port (16379-16399) if redis-server is installed,
#                            else 127.0.0.1:6379 if it answers, else the Redis rows are
#                            skipped with a note.
#   LOCKSMITH_BENCH_PYTHON   interpreter for the venv (default: python3.11, else python3).
#   LOCKSMITH_BENCH_STRICT=1 fail if the Python venv cannot be created (default: warn, skip).
#   LOCKSMITH_BENCH_WAIT     full run only: seconds to wait for the 1-minute load average to
#                            drop below the number of CPUs before measuring (default 300; 0: no wait).
set -euo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

QUICK=0
for a in "$@"; do
  case "$a" in
    --quick) QUICK=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "compare.sh: unknown argument '$a'" >&2; usage >&2; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="$ROOT/bench/out"
VENV="$ROOT/bench/.venv"
mkdir -p "$OUT"
MODE_ARGS=()
if [ "$QUICK" = 1 ]; then
  MODE_ARGS=(--quick)
  RESULTS="$OUT/RESULTS-quick.md"
  SVG="$OUT/handoff-quick.svg"
else
  RESULTS="$ROOT/bench/RESULTS.md"
  SVG="$ROOT/bench/handoff.svg"
fi
STATUS=0
say() { printf '\n== %s\n' "$*" >&2; }

say "building locksmith-bench (release)"
cargo build --release -p locksmith-bench
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/locksmith-bench"

# --- Redis -------------------------------------------------------------------------------
REDIS_PID=""
cleanup() {
  if [ -n "$REDIS_PID" ]; then kill "$REDIS_PID" 2>/dev/null || true; wait "$REDIS_PID" 2>/dev/null || true; fi
}
trap cleanup EXIT
answers() { # host port
  (exec 3<>"/dev/tcp/$1/$2" && printf 'PING\r\n' >&3 && timeout 1 head -c 5 <&3 | grep -q PONG) 2>/dev/null
}
# A private server by default: a shared one on 6379 may be busy with other people's tests.
if [ -z "${LOCKSMITH_REDIS_URL:-}" ] && command -v redis-server >/dev/null 2>&1; then
  for port in $(seq 16379 16399); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
        --logfile "$OUT/redis.log" --dir /tmp >/dev/null 2>&1 &
      REDIS_PID=$!
      for _ in $(seq 50); do answers 127.0.0.1 "$port" && break; sleep 0.1; done
      if answers 127.0.0.1 "$port"; then
        export LOCKSMITH_REDIS_URL="redis://127.0.0.1:$port/"
        echo "started a private redis-server on 127.0.0.1:$port (pid $REDIS_PID)" >&2
      fi
      break
    fi
  done
fi
if [ -z "${LOCKSMITH_REDIS_URL:-}" ] && answers 127.0.0.1 6379; then
  export LOCKSMITH_REDIS_URL="redis://127.0.0.1:6379/"
fi
if [ -n "${LOCKSMITH_REDIS_URL:-}" ]; then
  echo "Redis: $LOCKSMITH_REDIS_URL" >&2
else
  echo "note: no Redis reachable and no redis-server installed; the Redis rows will be skipped" >&2
  export LOCKSMITH_REDIS_URL="redis://127.0.0.1:6379/"
fi

# --- A quiet machine -----------------------------------------------------------------------
# Other work on a shared machine moves the numbers more than anything measured here; the
# report records the load average either way.
if [ "$QUICK" = 0 ]; then
  ncpu="$(nproc)"
  waited=0
  limit="${LOCKSMITH_BENCH_WAIT:-300}"
  while awk -v n="$ncpu" '{ exit !($1 >= n) }' /proc/loadavg && [ "$waited" -lt "$limit" ]; do
    [ "$waited" = 0 ] && echo "load average $(cut -d' ' -f1 /proc/loadavg) >= $ncpu CPUs: waiting up to ${limit}s for a quieter machine" >&2
    sleep 10
    waited=$((waited + 10))
  done
  if awk -v n="$ncpu" '{ exit !($1 >= n) }' /proc/loadavg; then
    echo "warning: measuring on a busy machine (load average $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  fi
fi

# --- Rust side: locksmith rows and Rust peers ----------------------------------------------
rm -f "$OUT"/*.jsonl
say "Rust peers and locksmith rows"
"$BIN" run "${MODE_ARGS[@]}" --out "$OUT" || { echo "warning: some Rust rows failed" >&2; STATUS=1; }

# --- Python side ---------------------------------------------------------------------------
say "Python peers (virtual environment $VENV)"
PY="${LOCKSMITH_BENCH_PYTHON:-}"
if [ -z "$PY" ]; then
  if command -v python3.11 >/dev/null 2>&1; then PY=python3.11; else PY=python3; fi
fi
REQ="$ROOT/bench/python/requirements.txt"
STAMP="$VENV/.requirements.sha256"
WANT="$( (cat "$REQ"; "$PY" --version 2>&1) | sha256sum | cut -d' ' -f1)"
VENV_OK=1
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "creating $VENV with $PY and installing $REQ" >&2
  rm -rf "$VENV"
  if "$PY" -m venv "$VENV" \
     && "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQ"; then
    echo "$WANT" > "$STAMP"
  else
    VENV_OK=0
  fi
fi
if [ "$VENV_OK" = 1 ]; then
  # The locksmith package itself (peer_locksmith.py), built in release mode.
  echo "building the locksmith Python package into $VENV (maturin, release)" >&2
  if ! (VIRTUAL_ENV="$VENV" PATH="$VENV/bin:$PATH" "$VENV/bin/maturin" develop --release --quiet); then
    echo "warning: the locksmith Python package did not build; its rows are skipped" >&2
    STATUS=1
  fi
  SCRATCH="$OUT/scratch-py"
  mkdir -p "$SCRATCH"
  for script in "$ROOT"/bench/python/peer_*.py; do
    name="$(basename "$script" .py)"
    echo "-- $name" >&2
    if ! (cd "$ROOT/bench/python" && timeout 600 "$VENV/bin/python" "$script" "${MODE_ARGS[@]}" \
          --out "$OUT/python-${name#peer_}.jsonl" --scratch "$SCRATCH"); then
      echo "warning: $name failed (its rows say why)" >&2
      STATUS=1
    fi
  done
  rm -rf "$SCRATCH"
else
  echo "warning: could not create the Python virtual environment; Python peers skipped" >&2
  if [ "${LOCKSMITH_BENCH_STRICT:-0}" = 1 ]; then STATUS=1; fi
fi

# --- Report --------------------------------------------------------------------------------
say "report"
"$BIN" report "${MODE_ARGS[@]}" --out "$OUT" --results "$RESULTS" --svg "$SVG"
echo "results: $RESULTS" >&2
exit "$STATUS"
