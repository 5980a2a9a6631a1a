#!/usr/bin/env bash
# Fuzzes the HTTP API with schemathesis (from PyPI) against its own OpenAPI
# document: starts the release binary on a free loopback port with a fresh
# data dir, runs `st run .../api-docs/openapi.json` with every check (no 5xx,
# status codes / content types / headers / bodies as documented, schema-valid
# requests accepted, schema-violating ones refused, 405 for undocumented
# methods), stops the server, and exits non-zero when schemathesis found
# anything. Called by .ci/run after the release build.
#
# Environment (all optional):
#   SIDEWIRE_BIN                   the binary (default target/release/sidewire)
#   SIDEWIRE_SCHEMATHESIS_EXAMPLES test cases per operation and phase (default 100)
#   SIDEWIRE_SCHEMATHESIS_SEED     hypothesis seed (default fixed, so CI is
#                                  reproducible; `random` for a fresh one)
#   SIDEWIRE_SCHEMATHESIS_TIMEOUT  seconds before the run is killed (default 300)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

# Pinned: a new schemathesis release may add checks; bump it on purpose.
ST_VERSION="4.32.5"
VENV="${XDG_CACHE_HOME:-$HOME/.cache}/sidewire-schemathesis"
BIN="${SIDEWIRE_BIN:-$ROOT/target/release/sidewire}"
EXAMPLES="${SIDEWIRE_SCHEMATHESIS_EXAMPLES:-100}"
SEED="${SIDEWIRE_SCHEMATHESIS_SEED:-4242}"
TIMEOUT="${SIDEWIRE_SCHEMATHESIS_TIMEOUT:-300}"

[ -x "$BIN" ] || { echo "schemathesis: no binary at $BIN (cargo build --release first)" >&2; exit 1; }

# The venv is reused across runs; (re)install when the pin is not what it holds.
if [ "$("$VENV/bin/st" --version 2>/dev/null)" != "st, version $ST_VERSION" ]; then
  echo "== installing schemathesis $ST_VERSION into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$ST_VERSION"
fi

WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# A free loopback port: bind to 0, read what the kernel picked, release it.
PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
BASE="http://127.0.0.1:$PORT"

# Built-in defaults (no config file in $WORK), sqlite in the temp dir, no
# tokens: the API is open, as a loopback-bound sidecar's is.
(
  cd "$WORK"
  export SIDEWIRE__SERVER__LISTEN="127.0.0.1:$PORT"
  export SIDEWIRE__PERSIST__SQLITE_PATH="$WORK/sidewire.db"
  export SIDEWIRE__TELEMETRY__LOG_LEVEL="warn"
  exec "$BIN" serve
) >"$WORK/server.log" 2>&1 &
SERVER_PID=$!

for _ in $(seq 1 100); do
  curl -fsS -o /dev/null "$BASE/healthz" 2>/dev/null && break
  kill -0 "$SERVER_PID" 2>/dev/null || { echo "schemathesis: the server exited:" >&2; cat "$WORK/server.log" >&2; exit 1; }
  sleep 0.1
done
curl -fsS -o /dev/null "$BASE/healthz" || { echo "schemathesis: the server did not come up on $BASE" >&2; exit 1; }

seed_args=(--seed "$SEED")
[ "$SEED" = "random" ] && seed_args=()

echo "== schemathesis $ST_VERSION against $BASE/api-docs/openapi.json ($EXAMPLES examples per operation, seed $SEED)"
status=0
(
  cd "$WORK"  # schemathesis writes its caches to the working directory
  export SCHEMATHESIS_HOOKS=schemathesis_hooks PYTHONPATH="$ROOT/.ci${PYTHONPATH:+:$PYTHONPATH}"
  timeout --kill-after=10 "$TIMEOUT" "$VENV/bin/st" --config-file "$ROOT/.ci/schemathesis.toml" \
    run "$BASE/api-docs/openapi.json" \
    --checks all \
    --max-examples "$EXAMPLES" \
    "${seed_args[@]}" \
    --generation-database none \
    --request-timeout 10 \
    --no-color
) || status=$?

if ! kill -0 "$SERVER_PID" 2>/dev/null; then
  echo "schemathesis: the server died during the run" >&2
  status=1
fi
if [ "$status" -ne 0 ]; then
  [ "$status" -eq 124 ] && echo "schemathesis: killed after ${TIMEOUT}s" >&2
  echo "== server log (last 50 lines)" >&2
  tail -n 50 "$WORK/server.log" >&2
  echo "schemathesis: FAILED (exit $status)" >&2
  exit 1
fi
echo "schemathesis: passed"
