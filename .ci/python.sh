#!/usr/bin/env bash
# The Python side of CI (issue 12): the sidewire-client package
# (clients/python), the example app (examples/fastapi_app) and the Kubernetes
# manifests (deploy/kubernetes, checked by a test).
#
#   ruff check + ruff format --check, mypy --strict, a wheel build (stdlib-only
#   runtime, py.typed inside), then pytest against the release binary.
#
# Works from a fresh clone: a venv with the pinned dev tools (the `dev` extra
# of clients/python/pyproject.toml) is created at $SIDEWIRE_PY_VENV (default
# clients/python/.venv, git-ignored) and rebuilt when the pins change.
# Needs Python >= 3.11 and PyPI (first run only). Expects
# target/release/sidewire to exist (CI builds it first) or $SIDEWIRE_BIN.
# Extra arguments go to pytest: .ci/python.sh -k fork -x
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
pkg=clients/python

python=""
for candidate in ${PYTHON:-} python3 python3.13 python3.12 python3.11; do
  if command -v "$candidate" >/dev/null 2>&1 &&
     "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    python=$candidate
    break
  fi
done
if [ -z "$python" ]; then
  echo "python.sh: needs Python >= 3.11 (set PYTHON=...)" >&2
  exit 1
fi

venv=${SIDEWIRE_PY_VENV:-$root/$pkg/.venv}
stamp="$venv/.pins"
pins="$("$python" --version 2>&1) $(sha256sum "$pkg/pyproject.toml" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$pins" ]; then
  echo "== venv $venv ($("$python" --version 2>&1))"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  # The pinned dev tools only (the package has no runtime dependencies).
  "$venv/bin/python" - "$pkg/pyproject.toml" > "$venv/dev-requirements.txt" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["optional-dependencies"]["dev"]))
PY
  "$venv/bin/python" -m pip install -q -r "$venv/dev-requirements.txt"
  echo "$pins" > "$stamp"
fi
py="$venv/bin/python"
# The package itself, editable, from this checkout (no network: hatchling is in the venv).
"$py" -m pip install -q --no-deps --no-build-isolation -e "$pkg"

# Run from the package folder: its pyproject.toml is the settings for the
# example app too (ruff falls back to the working directory's config).
echo "== ruff"
(cd "$pkg" && "$venv/bin/ruff" check . ../../examples/fastapi_app &&
  "$venv/bin/ruff" format --check . ../../examples/fastapi_app)

echo "== mypy --strict"
(cd "$pkg" && "$venv/bin/mypy" --strict && "$venv/bin/mypy" --strict ../../examples/fastapi_app/app.py)

echo "== wheel"
wheel_dir=$(mktemp -d)
trap 'rm -rf "$wheel_dir"' EXIT
"$py" -m pip wheel -q --no-deps --no-build-isolation -w "$wheel_dir" "$pkg"
"$py" - "$wheel_dir" <<'PY'
import pathlib, sys, zipfile
(wheel,) = pathlib.Path(sys.argv[1]).glob("sidewire_client-*.whl")
names = zipfile.ZipFile(wheel).namelist()
assert "sidewire_client/py.typed" in names, names
meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
runtime = [l for l in meta.splitlines() if l.startswith("Requires-Dist:") and "extra ==" not in l]
assert not runtime, f"runtime dependencies: {runtime}"
print(f"{wheel.name}: py.typed included, no runtime dependencies")
PY

echo "== pytest (sidewire binary: ${SIDEWIRE_BIN:-target/release/sidewire})"
export SIDEWIRE_BIN="${SIDEWIRE_BIN:-$root/target/release/sidewire}"
# Tests that need the binary fail instead of skipping when SIDEWIRE_TEST_REQUIRE
# names `sidewire`. Unset: required. Empty: let them skip. Otherwise (e.g.
# .ci/run's "prometheus,chromium") sidewire is added: CI built it.
if [ -z "${SIDEWIRE_TEST_REQUIRE+set}" ]; then
  export SIDEWIRE_TEST_REQUIRE=sidewire
elif [ -n "$SIDEWIRE_TEST_REQUIRE" ] && [[ ",$SIDEWIRE_TEST_REQUIRE," != *,sidewire,* ]]; then
  export SIDEWIRE_TEST_REQUIRE="$SIDEWIRE_TEST_REQUIRE,sidewire"
fi
set +e
(cd "$pkg" && "$py" -m pytest -q -p no:cacheprovider "$@")
status=$?
set -e
if [ "$status" -eq 5 ]; then
  # Exit 5: no test was collected (a bad -k, a broken collection path). That
  # is not a pass in CI; SIDEWIRE_PY_ALLOW_NO_TESTS=1 accepts it on purpose.
  if [ "${SIDEWIRE_PY_ALLOW_NO_TESTS:-0}" = 1 ]; then
    echo "pytest collected no tests (accepted: SIDEWIRE_PY_ALLOW_NO_TESTS=1)"
    exit 0
  fi
  echo "python.sh: pytest collected no tests" >&2
  exit 1
fi
exit "$status"
