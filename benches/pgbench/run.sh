#!/usr/bin/env bash
# The cluster's critical section alone: pgbench runs `sidewire_commit` (the
# server-side function that holds the head lock, see
# src/persist/postgres/commit.rs) back to back from many clients, with 1 and
# with 100 events per call. With the lock the only thing they share, the tps
# here is the ceiling of group commits per second across all replicas.
#
#   CLIENTS=12 SECONDS_EACH=8 PREFILL=0 (events stored before measuring);
#   CLIENTS=1 gives the cost of one call alone (the cluster's writer has one
#   commit in flight).
#   target/release/sidewire must exist (SIDEWIRE_BIN: another build, e.g.
#   an older schema to compare with); PostgreSQL at $PGHOST:$PGPORT (default
#   127.0.0.1:5432, user postgres, trust). Makes and drops database sw_pgbench.
set -euo pipefail
cd "$(dirname "$0")"
export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-postgres}
bin=${SIDEWIRE_BIN:-../../target/release/sidewire}
db=sw_pgbench
psql -d test -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
tmp=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null; rm -rf "$tmp"; psql -d test -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)"' EXIT
cat > "$tmp/sw.toml" <<TOML
[server]
listen = "127.0.0.1:0"
replica_name = "pgbench"
[persist]
plugin = "postgres"
postgres_url = "postgres://$PGUSER@$PGHOST:$PGPORT/$db"
TOML
# Starting a replica migrates the schema (the functions are part of it).
"$bin" serve --config "$tmp/sw.toml" >"$tmp/log" 2>&1 &
pid=$!
for _ in $(seq 100); do grep -q "sidewire listening" "$tmp/log" && break; sleep 0.1; done
kill "$pid"; wait "$pid" 2>/dev/null || true
# PREFILL=N stores N events first (ids of the generator's shape, one
# `stored_ms` per event), so the indexes are as deep as a store in use.
if [[ ${PREFILL:-0} -gt 0 ]]; then
  echo "== prefill: $PREFILL events"
  psql -d "$db" -qc "INSERT INTO sidewire_events (seq, type, ts_ms, id, source, data, stored_ms)
      SELECT g, 'ingestion_complete', 1765000000000, 'pre-' || (g / 1000) || '-' || g, 'bench',
             '{\"fileName\":\"report-2026-q3.pdf\",\"filesProcessed\":3,\"bytes\":48213}', 1765000000000 + g
        FROM generate_series(1, $PREFILL) g" \
    -c "UPDATE sidewire_head SET last_seq = $PREFILL" -c "VACUUM ANALYZE sidewire_events"
fi
# RAW=1 adds the floor: the same 100 rows per statement inserted with seqs
# from a plain SEQUENCE, with no head lock, no id probe and no stats (what
# PostgreSQL costs for the rows and their indexes alone, whatever the design
# around it), with 1, 2 and 4 clients, synchronous_commit off.
if [[ ${RAW:-0} == 1 ]]; then
  psql -d "$db" -qc "CREATE SEQUENCE sw_raw_seq START 1000000000000"
  for c in 1 2 4; do
    echo "== floor: plain INSERT of 100 rows per statement, $c client(s), synchronous_commit off"
    PGOPTIONS="-c synchronous_commit=off" pgbench -n -c $c -j $(( c < 2 ? c : 2 )) -T "${SECONDS_EACH:-8}" -f raw.sql "$db" \
      | grep -E "latency average|tps" | sed -E 's/^tps = ([0-9.]+).*/&  (rows\/s: \1 x 100)/'
  done
fi
for script in one hundred; do
  echo "== sidewire_commit, $script event(s) per call, ${CLIENTS:-12} clients"
  pgbench -n -c "${CLIENTS:-12}" -j "$(( ${CLIENTS:-12} < 2 ? ${CLIENTS:-12} : 2 ))" -T "${SECONDS_EACH:-8}" -f "$script.sql" "$db" | grep -E "latency average|tps"
done
