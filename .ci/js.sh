#!/usr/bin/env bash
# The JavaScript side of CI (issue 21): the sidewire-client package
# (clients/js), the built-in page's bundle (assets/dashboard/app.js) and the
# examples (examples/react_dashboard, examples/express_app).
#
#   npm ci from the committed lock files, tsc --noEmit (strict), eslint, the
#   build (dist/ + the dashboard entry's size limit + a check that the
#   committed page bundle is current), a check that src/messages.ts matches
#   the server's OpenAPI document, the React example's Vite build, then the
#   tests (node --test) against the release binary and in Chromium.
#
# Needs Node >= 20 and npm (the registry on the first run; later runs use
# npm's cache). Expects target/release/sidewire (CI builds it first) or
# $SIDEWIRE_BIN. Extra arguments go to node --test, e.g.
#   .ci/js.sh --test-name-pattern=replicas
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export SIDEWIRE_BIN="${SIDEWIRE_BIN:-$root/target/release/sidewire}"
export npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "js.sh: needs node (>= 20) and npm" >&2
  exit 1
fi
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 20 ]; then
  echo "js.sh: needs Node >= 20, found $(node --version)" >&2
  exit 1
fi

# Programs the tests need fail instead of skipping when SIDEWIRE_TEST_REQUIRE
# names them. Unset: required (sidewire and the examples). Empty: let them
# skip. Otherwise (.ci/run's list) sidewire and the examples are added: CI
# built them.
ours=sidewire,react_dashboard,express_app
if [ -z "${SIDEWIRE_TEST_REQUIRE+set}" ]; then
  export SIDEWIRE_TEST_REQUIRE=$ours
elif [ -n "$SIDEWIRE_TEST_REQUIRE" ]; then
  export SIDEWIRE_TEST_REQUIRE="$SIDEWIRE_TEST_REQUIRE,$ours"
fi

for dir in clients/js examples/react_dashboard examples/express_app; do
  echo "== npm ci ($dir)"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
done

cd clients/js
echo "== tsc --noEmit (strict)"
npm run --silent typecheck
echo "== eslint"
npm run --silent lint
echo "== build (dist/, size limit, assets/dashboard/app.js is current)"
node scripts/build.mjs --check
echo "== the published types as an application sees them (test/types, with Express's and Fastify's types)"
npx --no-install tsc -p test/types

if [ -x "$SIDEWIRE_BIN" ]; then
  echo "== src/messages.ts matches the server's OpenAPI document"
  node scripts/gen-types.mjs --check
elif [[ ",$SIDEWIRE_TEST_REQUIRE," == *,sidewire,* ]]; then
  echo "js.sh: $SIDEWIRE_BIN is missing (cargo build --release)" >&2
  exit 1
else
  echo "SKIP the OpenAPI type check: $SIDEWIRE_BIN is missing"
fi

echo "== examples/react_dashboard: vite build"
(cd "$root/examples/react_dashboard" && npx --no-install vite build --logLevel warn)

echo "== node --test (sidewire binary: $SIDEWIRE_BIN)"
node --test --test-concurrency=1 --test-reporter=spec "$@" test/*.test.mjs
