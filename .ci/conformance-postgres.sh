#!/bin/sh
# Runs one conformance-suite server on the machine's PostgreSQL instead of
# SQLite: SIDEWIRE_CMD='sh .ci/conformance-postgres.sh <sidewire binary> {config}'.
# Each server directory the suite makes gets a database of its own (the same
# one again when the suite restarts a server in that directory); .ci/run drops
# them afterwards (`sw_conf_*`).
set -eu
bin=$1
config=$2
db="sw_conf_$(dirname "$config" | md5sum | cut -c1-16)"
psql="psql -h 127.0.0.1 -U postgres -d test -qAt"
if [ -z "$($psql -c "SELECT 1 FROM pg_database WHERE datname = '$db'")" ]; then
  $psql -c "CREATE DATABASE $db" >/dev/null
fi
exec env SIDEWIRE__PERSIST__PLUGIN=postgres \
  SIDEWIRE__PERSIST__POSTGRES_URL="postgres://postgres@127.0.0.1:5432/$db" \
  "$bin" serve --config "$config"
