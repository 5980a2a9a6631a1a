#!/usr/bin/env bash
# Scale-out benchmark (issue 19): N sidewire replicas on one PostgreSQL
# database + Redis, against a Node + Redis cluster, with the same generator.
#
#   benches/cluster.sh            # 1, 3, 6 replicas, then the Node cluster (3 nodes): prints one table
#   benches/cluster.sh soak       # the cluster soak: 3 replicas, kill -9 + restart every minute, Redis cuts
#
# Builds nothing: expects release binaries (cargo build --release) or paths in
# SIDEWIRE_BIN / BENCH_BIN. Uses the PostgreSQL and Redis on this machine: it
# creates its own database (dropped at the end) and its own Redis key prefix
# (deleted at the end); it never stops or reconfigures either. Loopback only.
#
# Settings (environment):
#   REPLICAS="1 3 6"  NODE_NODES=3 (0: skip the Node cluster)  DURATION=10 (s per ingest load)
#   E2E_COUNT=2000  FANOUT_CLIENTS=900 (0: skip)  FANOUT_RATE=50  POOL=8 (postgres_pool_size per replica)
#   PG_HOST=127.0.0.1 PG_PORT=5432 PG_USER=postgres  REDIS_HOST=127.0.0.1 REDIS_PORT=6379
#   PORT_BASE=18900  KEEP=1 (keep the work dir with configs, logs, RESULT lines)
#   soak: SOAK_REPLICAS=3 SOAK_MINUTES=10 SOAK_CLIENTS=300 SOAK_RATE=200 SOAK_PRODUCERS=3
#         SOAK_KILL_EVERY=60 SOAK_CUT_EVERY=45 SOAK_CUT_SECS=5 PROXY_PORT=16390
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
SIDEWIRE=${SIDEWIRE_BIN:-$root/target/release/sidewire}
BENCH=${BENCH_BIN:-$root/target/release/sidewire-bench}
# Replicas start from their own work directory: a relative path would miss.
[[ $SIDEWIRE == /* ]] || SIDEWIRE=$PWD/$SIDEWIRE
[[ $BENCH == /* ]] || BENCH=$PWD/$BENCH
REPLICAS=${REPLICAS:-"1 3 6"}
NODE_NODES=${NODE_NODES:-3}
DURATION=${DURATION:-10}
E2E_COUNT=${E2E_COUNT:-2000}
FANOUT_CLIENTS=${FANOUT_CLIENTS:-900}
FANOUT_RATE=${FANOUT_RATE:-50}
POOL=${POOL:-8}
PG_HOST=${PG_HOST:-127.0.0.1}
PG_PORT=${PG_PORT:-5432}
PG_USER=${PG_USER:-postgres}
REDIS_HOST=${REDIS_HOST:-127.0.0.1}
REDIS_PORT=${REDIS_PORT:-6379}
PORT_BASE=${PORT_BASE:-18900}
MODE=${1:-table}

for b in "$SIDEWIRE" "$BENCH"; do
  [[ -x $b ]] || { echo "missing $b: cargo build --release (or set SIDEWIRE_BIN / BENCH_BIN)" >&2; exit 2; }
done
for t in psql redis-cli curl python3; do
  command -v "$t" >/dev/null || { echo "needs $t" >&2; exit 2; }
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sidewire-cluster-bench.XXXXXX")
TAG="swbench_$$_$RANDOM"
DB=$TAG
PIDS=()

psql_admin() { psql -q -X -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -v ON_ERROR_STOP=1 "$@"; }
redis() { redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" "$@"; }

stop_all() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  PIDS=()
}

cleanup() {
  set +e
  stop_all
  psql_admin -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
  redis --scan --pattern "$TAG*" | xargs -r redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" del >/dev/null
  if [[ ${KEEP:-0} == 1 ]]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fresh_db() {
  psql_admin -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" >/dev/null
}

# replica_config DIR I PORT PREFIX REDIS_PORT
replica_config() {
  cat >"$1/r$2.toml" <<EOF
[server]
listen = "127.0.0.1:$3"
replica_name = "r$2"
[persist]
plugin = "postgres"
postgres_url = "postgres://$PG_USER@$PG_HOST:$PG_PORT/$DB"
postgres_pool_size = $POOL
[broadcast]
backend = "redis"
redis_url = "redis://$REDIS_HOST:$5/0"
prefix = "$4"
[ws]
max_connections_per_ip = 100000
connect_rate_per_ip_per_min = 1000000
EOF
}

wait_ready() { # URL
  for _ in $(seq 1 600); do
    curl -sf -o /dev/null "$1/readyz" && return 0
    sleep 0.1
  done
  echo "$1 not ready within 60 s" >&2
  return 1
}

# CPU: utime+stime ticks of named process groups, from /proc.
cpu_snap() { # FILE; groups: servers (ours), postgres, redis, total (machine, non-idle), children (the generator)
  times >"$1.times" # in this shell: a subshell would not see its parent's children
  {
    for p in "${PIDS[@]}"; do [[ -r /proc/$p/stat ]] && echo "servers $p $(awk '{print $14+$15}' /proc/$p/stat)"; done
    for p in $(pgrep -x postgres); do [[ -r /proc/$p/stat ]] && echo "postgres $p $(awk '{print $14+$15}' /proc/$p/stat 2>/dev/null || echo 0)"; done
    for p in $(pgrep -x redis-server); do echo "redis $p $(awk '{print $14+$15}' /proc/$p/stat)"; done
    awk '/^cpu /{print "total 0", $2+$3+$4+$7+$8+$9}' /proc/stat
    echo "children 0 $(children_ticks "$1.times")"
  } >"$1" 2>/dev/null || true
}
children_ticks() { # FILE from `times`: CPU of this shell's finished children (the generator), in ticks
  local t
  t=$(tail -1 "$1")
  python3 -c '
import re,sys
s=sys.argv[1]; tot=0.0
for m,sec in re.findall(r"(\d+)m([\d.]+)s", s): tot+=int(m)*60+float(sec)
print(int(tot*100))' "$t"
}

# run NAME ARGS...: one generator run, its RESULT line + CPU per group into $WORK/results.jsonl
run() {
  local name=$1; shift
  local out="$WORK/$name.out"
  cpu_snap "$WORK/cpu.a"
  local t0; t0=$(date +%s.%N)
  "$BENCH" "$@" >"$out" 2>&1 || { echo "  $name failed:"; tail -5 "$out"; return 0; }
  local t1; t1=$(date +%s.%N)
  cpu_snap "$WORK/cpu.b"
  python3 - "$name" "$t0" "$t1" "$WORK/cpu.a" "$WORK/cpu.b" "$out" >>"$WORK/results.jsonl" <<'EOF'
import json, sys
name, t0, t1, a, b, out = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
def load(f):
    d = {}
    for line in open(f):
        g, pid, ticks = line.split()
        d[(g, pid)] = int(ticks)
    return d
A, B = load(a), load(b)
secs = t1 - t0
cores = {}
for (g, pid), tb in B.items():
    cores[g] = cores.get(g, 0) + (tb - A.get((g, pid), 0)) / 100 / secs
cores["bench"] = cores.pop("children", 0)
res = None
for line in open(out):
    if line.startswith("RESULT "):
        res = json.loads(line[7:])
print(json.dumps({"name": name, "result": res, "cores": cores}))
EOF
  grep -E "events/s|requests/s|ingest→delivery|lost|out of order" "$out" | sed 's/^/    /'
}

loads() { # SETUP URL1 URL2 ... (the e2e dashboard is on the 3rd, or the last if fewer)
  local setup=$1; shift
  local urls=("$@")
  local all; all=$(IFS=,; echo "${urls[*]}")
  local dash=${urls[2]:-${urls[-1]}}
  echo "  $setup: ingest 100 events/request, 4 producers over ${#urls[@]} node(s)"
  run "$setup.batch" --url "$all" ingest --concurrency 4 --batch 100 --duration "$DURATION"
  echo "  $setup: ingest 1 event/request, 24 producers over ${#urls[@]} node(s)"
  run "$setup.single" --url "$all" ingest --concurrency 24 --batch 1 --duration "$DURATION"
  echo "  $setup: idle ingest on ${urls[0]} → dashboard on $dash"
  run "$setup.e2e" --url "${urls[0]}" e2e --count "$E2E_COUNT" --gap-ms 2 --dashboard-url "$dash"
  if [[ $FANOUT_CLIENTS -gt 0 ]]; then
    echo "  $setup: fan-out $FANOUT_CLIENTS clients over ${#urls[@]} node(s) × $FANOUT_RATE events/s"
    run "$setup.fanout" --url "$all" fanout --clients "$FANOUT_CLIENTS" --rate "$FANOUT_RATE" --duration "$DURATION"
  fi
}

sidewire_cluster() { # N
  local n=$1 i urls=()
  fresh_db
  local prefix="${TAG}_r$n"
  for i in $(seq 1 "$n"); do
    local port=$((PORT_BASE + i))
    replica_config "$WORK" "$i" "$port" "$prefix" "$REDIS_PORT"
    (cd "$WORK" && exec "$SIDEWIRE" serve --config "$WORK/r$i.toml") >"$WORK/replica-$n-$i.log" 2>&1 &
    PIDS+=($!)
    urls+=("http://127.0.0.1:$port")
    # one at a time: the schema migrates under an advisory lock anyway
    wait_ready "http://127.0.0.1:$port"
  done
  echo "== $n sidewire replica(s) on database $DB, Redis prefix $prefix"
  loads "sidewire-$n" "${urls[@]}"
  stop_all
}

node_cluster() { # N
  local n=$1 i urls=()
  if [[ ! -d $here/baseline/node_modules/@redis/client ]]; then
    echo "== npm ci in benches/baseline (the Node baseline's locked dependencies)"
    (cd "$here/baseline" && npm ci --no-audit --no-fund >/dev/null)
  fi
  for i in $(seq 1 "$n"); do
    local port=$((PORT_BASE + 100 + i))
    PORT=$port REDIS_URL="redis://$REDIS_HOST:$REDIS_PORT" PREFIX="${TAG}_node" node "$here/baseline/cluster.js" \
      >"$WORK/node-$i.log" 2>&1 &
    PIDS+=($!)
    urls+=("http://127.0.0.1:$port")
    wait_ready "http://127.0.0.1:$port"
  done
  echo "== Node + Redis cluster, $n nodes"
  loads "node-$n" "${urls[@]}"
  stop_all
}

table() {
  python3 - "$WORK/results.jsonl" <<'EOF'
import json, sys
rows = {}
order = []
for line in open(sys.argv[1]):
    r = json.loads(line)
    setup, load = r["name"].rsplit(".", 1)
    if setup not in rows:
        rows[setup] = {}
        order.append(setup)
    rows[setup][load] = r
def lat(res):
    l = res["latency"]
    return f'{l["p50_ms"]:.2f} / {l["p99_ms"]:.2f} ms'
def cores(r):
    c = r["cores"]
    return f'{c.get("servers", 0):.2f} / {c.get("postgres", 0):.2f} / {c.get("redis", 0):.2f} / {c.get("bench", 0):.2f} / {c.get("total", 0):.2f}'
def cell(setup, load):
    r = rows[setup].get(load)
    if not r or not r["result"]:
        return "failed", "", ""
    res = r["result"]
    if load == "batch":
        extra = "" if not res["non_202"] else f' non-202 {res["non_202"]}'
        return f'{res["events_per_sec"]:,.0f} events/s{extra}', lat(res), cores(r)
    if load == "single":
        extra = "" if not res["non_202"] else f' non-202 {res["non_202"]}'
        return f'{res["requests_per_sec"]:,.0f} req/s{extra}', lat(res), cores(r)
    if load == "e2e":
        return f'{res["count"]} events', lat(res), cores(r)
    if load == "fanout":
        return (f'{res["connected"]} clients, lost {res["lost"]}, out of order {res["out_of_order"]}',
                lat(res), cores(r))
names = {"batch": "ingest 100 events/request, 4 producers spread",
         "single": "ingest 1 event/request, 24 producers spread",
         "e2e": "idle ingest on node 1 → dashboard on node 3",
         "fanout": "fan-out, clients spread, one producer on node 1"}
print()
print("| load | setup | throughput / result | p50 / p99 | CPU cores: servers / postgres / redis / generator / machine |")
print("| --- | --- | --- | --- | --- |")
for load in ["batch", "single", "e2e", "fanout"]:
    for setup in order:
        if load in rows[setup]:
            t, l, c = cell(setup, load)
            print(f"| {names[load]} | {setup} | {t} | {l} | {c} |")
EOF
}

soak() {
  local n=${SOAK_REPLICAS:-3} i urls=()
  local proxy_port=${PROXY_PORT:-16390}
  fresh_db
  mkdir -p "$WORK/soak"
  for i in $(seq 1 "$n"); do
    replica_config "$WORK/soak" "$i" $((PORT_BASE + i)) "${TAG}_soak" "$proxy_port"
    urls+=("http://127.0.0.1:$((PORT_BASE + i))")
  done
  local all; all=$(IFS=,; echo "${urls[*]}")
  echo "== cluster soak: $n replicas on database $DB, Redis through a proxy on 127.0.0.1:$proxy_port"
  (cd "$WORK/soak" && "$BENCH" --url "$all" soak \
    --minutes "${SOAK_MINUTES:-10}" --period-secs 60 \
    --clients "${SOAK_CLIENTS:-300}" --rate "${SOAK_RATE:-200}" --producers "${SOAK_PRODUCERS:-3}" \
    --lifetime-secs 50 --reload-every-secs 5 \
    --replica-cmd "$SIDEWIRE serve --config $WORK/soak/r{i}.toml" --replica-log-dir "$WORK/soak" \
    --kill-every-secs "${SOAK_KILL_EVERY:-60}" \
    --redis-proxy "127.0.0.1:$proxy_port=$REDIS_HOST:$REDIS_PORT" \
    --cut-every-secs "${SOAK_CUT_EVERY:-45}" --cut-secs "${SOAK_CUT_SECS:-5}") | tee "$WORK/soak.out"
}

echo "sidewire-cluster-bench $(date -u +%FT%TZ) on $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "  sidewire $("$SIDEWIRE" --version 2>/dev/null || echo '?') ($SIDEWIRE), work dir $WORK"
case $MODE in
  soak)
    soak
    ;;
  table)
    for n in $REPLICAS; do sidewire_cluster "$n"; done
    if [[ $NODE_NODES -gt 0 ]]; then node_cluster "$NODE_NODES"; fi
    echo
    echo "Results ($(date -u +%FT%TZ), load average at the end $(cut -d' ' -f1-3 /proc/loadavg)):"
    table
    ;;
  *)
    echo "usage: $0 [table|soak]" >&2
    exit 2
    ;;
esac
