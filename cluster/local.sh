#!/usr/bin/env bash
# A multi-node Ray cluster on this one machine: a head node and separate rollout and trainer
# worker nodes, each a real raylet with its own resources and labels, token authentication on,
# the dashboard on for `ray job submit` (on 127.0.0.1 only; the nodes themselves register on this
# machine's network address: see "Networking" below).
#
#   cluster/local.sh up       start the cluster (prints how to submit a job)
#   cluster/local.sh status   which of its nodes are alive, and `ray status` of the cluster
#   cluster/local.sh env      the export lines for RAY_ADDRESS and the token (eval "$(cluster/local.sh env)")
#   cluster/local.sh down     stop exactly the nodes `up` started (never a bare `ray stop`)
#
# Layout (the numbers are Ray's logical CPUs, not cores):
#   head        num_cpus=0: GCS, dashboard, job drivers; no actor lands here
#   rollout-i   num_cpus=ROLLOUT_CPUS, resources {"rollout": ROLLOUT_CPUS}, labels role=rollout
#   trainer-i   num_cpus=TRAINER_CPUS, resources {"trainer": TRAINER_CPUS}, labels role=trainer
# A run sends its actors there with cluster.rollout_resources={rollout: 1} and
# cluster.trainer_resources={trainer: 1} (see cluster/README.md).
#
# Settings (environment variables, defaults in brackets):
#   DISTILL_RAY_LOCAL_DIR     state directory: pids, logs, token, Ray's temp dir [/tmp/drl-$USER]
#                             (keep it short: Ray's unix socket paths live under it)
#   DISTILL_RAY_GCS_PORT      GCS port of the head [6390]
#   DISTILL_RAY_DASHBOARD_PORT dashboard / job submission port [8266]
#   DISTILL_RAY_ROLLOUT_NODES, DISTILL_RAY_ROLLOUT_CPUS   rollout nodes and CPUs each [1, 2]
#   DISTILL_RAY_TRAINER_NODES, DISTILL_RAY_TRAINER_CPUS   trainer nodes and CPUs each [1, 2]
#   DISTILL_RAY_OBJECT_STORE_MB  object store per node, MiB [256]
#   DISTILL_RAY_START_TIMEOUT  seconds a node may take to start [300]
#   RAY                        the `ray` executable [the one beside this repo's .venv, else on PATH]
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
DIR="${DISTILL_RAY_LOCAL_DIR:-/tmp/drl-${USER:-$(id -un)}}"
GCS_PORT="${DISTILL_RAY_GCS_PORT:-6390}"
DASHBOARD_PORT="${DISTILL_RAY_DASHBOARD_PORT:-8266}"
ROLLOUT_NODES="${DISTILL_RAY_ROLLOUT_NODES:-1}"
ROLLOUT_CPUS="${DISTILL_RAY_ROLLOUT_CPUS:-2}"
TRAINER_NODES="${DISTILL_RAY_TRAINER_NODES:-1}"
TRAINER_CPUS="${DISTILL_RAY_TRAINER_CPUS:-2}"
OBJECT_STORE_BYTES=$(( ${DISTILL_RAY_OBJECT_STORE_MB:-256} * 1024 * 1024 ))
if [[ -z "${RAY:-}" ]]; then
    if [[ -x "$REPO/.venv/bin/ray" ]]; then RAY="$REPO/.venv/bin/ray"; else RAY="$(command -v ray || true)"; fi
fi
[[ -x "$RAY" ]] || { echo "error: no ray executable (set RAY=/path/to/ray)" >&2; exit 2; }
BIN="$(dirname "$RAY")"
PYTHON="$BIN/python"
[[ -x "$PYTHON" ]] || PYTHON="$(command -v python3)"

# Token authentication (on by default in Ray >= 2.60): this cluster has its own token file, so
# it neither reads nor overwrites ~/.ray/auth_token. Every Ray process started below, and every
# client (ray job submit, ray status, ray.init), finds it through RAY_AUTH_TOKEN_PATH.
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH="$DIR/auth_token"
# Job drivers run on the head with this PATH: `distill-ray` and `python` resolve to this venv.
export PATH="$BIN:$PATH"
export RAY_USAGE_STATS_ENABLED=0
# Networking (cluster/README.md, "What the cluster exposes"). On Linux `ray start` registers every
# node on this machine's network address (it rewrites 127.0.0.1 to it), and Ray binds its servers to
# loopback only on a node whose address is 127.0.0.1, which Linux allows only for a one-node
# cluster. So the GCS, raylets, object managers, workers, agents and the Ray client server listen
# beyond loopback; all of them check the token. The dashboard (job submission) is bound to
# 127.0.0.1 below. Each node's Prometheus metrics exporter would also listen on every interface
# and answer without the token; nothing here reads it, so metrics collection is off.
export RAY_enable_metrics_collection=0

free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# pid of a node's `ray start --block` process, if it is alive and still ours
node_pid() {
    local file="$DIR/pids/$1.pid" pid
    [[ -f "$file" ]] || return 1
    pid="$(cat "$file")"
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q -- "start --block" || return 1  # pid reused by something else
    echo "$pid"
}

# every descendant of a pid (the node's raylet, GCS, agents, actor workers)
descendants() {
    local child
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        echo "$child"
        descendants "$child"
    done
}

# start_node NAME ARGS...: `ray start --block` in the background, its pid recorded. Every node
# gets its own free ports for its agents: the dashboard agent's default (52365) would collide
# between nodes on one host, and with port 0 the raylet waits for the agents to write their
# ports to files, which it gives up on (and crashes) when a loaded machine starts them slowly.
start_node() {
    local name="$1"; shift
    nohup "$RAY" start --block --disable-usage-stats --dashboard-agent-listen-port "$(free_port)" \
        --dashboard-agent-grpc-port "$(free_port)" --metrics-export-port "$(free_port)" \
        --runtime-env-agent-port "$(free_port)" "$@" >"$DIR/logs/$name.out" 2>&1 </dev/null &
    echo $! >"$DIR/pids/$name.pid"
    # until the background job has become `ray start` (on a busy machine the fork runs late),
    # so that node_pid recognises it from here on
    for _ in $(seq 1 100); do node_pid "$name" >/dev/null && return 0; kill -0 $! 2>/dev/null || return 0; sleep 0.1; done
}

# wait_started NAME: until the node's `ray start` says it has registered with the GCS.
# Returns 2 when the node exited first (Ray gives a raylet 30 s to register, which a loaded
# 2-core machine can miss: start_and_wait tries again), 1 on our own timeout.
wait_started() {
    local name="$1" deadline=$(( SECONDS + ${DISTILL_RAY_START_TIMEOUT:-300} ))
    until grep -q "Ray runtime started" "$DIR/logs/$name.out" 2>/dev/null; do
        if ! node_pid "$name" >/dev/null; then
            echo "node $name exited while starting: $(grep -m1 -E '^[A-Za-z]*(Exception|Error):' "$DIR/logs/$name.out" || true) (log: $DIR/logs/$name.out)" >&2
            return 2
        fi
        if (( SECONDS > deadline )); then
            echo "error: node $name did not start within ${DISTILL_RAY_START_TIMEOUT:-300}s (log: $DIR/logs/$name.out)" >&2
            return 1
        fi
        sleep 1
    done
}

# start_and_wait NAME ARGS...: start a node (nodes start one at a time), up to 3 tries
start_and_wait() {
    local name="$1" try rc
    for try in 1 2 3; do
        start_node "$@"
        rc=0; wait_started "$name" || rc=$?
        (( rc == 0 )) && return 0
        stop_nodes "$name" >/dev/null
        (( rc == 2 && try < 3 )) || break
        cp "$DIR/logs/$name.out" "$DIR/logs/$name.try$try.out"
        echo "starting $name again ($(( try + 1 ))/3)" >&2
    done
    echo "error: node $name did not start" >&2
    return 1
}

# wait_listed: until `ray status` (the autoscaler's view, refreshed every few seconds, so it lags
# the nodes' own registration) lists every node kind's resources; a warning, not an error, after
# 120 s, since the nodes themselves are up
wait_listed() {
    local deadline=$(( SECONDS + 120 )) out want=()
    (( ROLLOUT_NODES > 0 )) && want+=("/$(( ROLLOUT_NODES * ROLLOUT_CPUS )).0 rollout")
    (( TRAINER_NODES > 0 )) && want+=("/$(( TRAINER_NODES * TRAINER_CPUS )).0 trainer")
    while :; do
        out="$("$RAY" status --address "127.0.0.1:$GCS_PORT" 2>/dev/null || true)"
        local w ok=1
        for w in "${want[@]}"; do grep -qF -- "$w" <<<"$out" || ok=0; done
        (( ok )) && return 0
        if (( SECONDS > deadline )); then
            echo "warning: \`ray status\` does not list every node yet (cluster/local.sh status shows it later)" >&2
            return 0
        fi
        sleep 2
    done
}

# the address the head registered on, as its `ray start` reported it (colour codes removed)
node_ip() {
    sed 's/\x1b\[[0-9;]*m//g' "$DIR/logs/head.out" | sed -n 's/.*Local node IP: *\([^ ]*\).*/\1/p' | head -1
}

print_env() {
    echo "export RAY_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT"
    echo "export RAY_AUTH_MODE=token"
    echo "export RAY_AUTH_TOKEN_PATH=$DIR/auth_token"
}

cmd_up() {
    if node_pid head >/dev/null; then
        echo "error: a cluster from $DIR is already running (cluster/local.sh down first)" >&2
        exit 1
    fi
    rm -rf "$DIR/pids" "$DIR/logs"
    mkdir -p "$DIR/pids" "$DIR/logs" "$DIR/ray"
    trap 'cmd_down >/dev/null; exit 1' INT TERM  # interrupted half way: stop what was started
    chmod 700 "$DIR"
    if [[ ! -s "$DIR/auth_token" ]]; then
        (umask 077; "$PYTHON" -c 'import secrets; print(secrets.token_hex(32), end="")' >"$DIR/auth_token")
    fi
    common=(--object-store-memory "$OBJECT_STORE_BYTES" --min-worker-port 0 --max-worker-port 0)
    # the client server's default port (10001) would collide with other clusters on this host
    start_and_wait head --head --port "$GCS_PORT" --temp-dir "$DIR/ray" --num-cpus 0 \
        --include-dashboard true --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" \
        --ray-client-server-port "$(free_port)" --labels "role=head" "${common[@]}" || { cmd_down >/dev/null; exit 1; }
    local nodes=1 i role count cpus
    for role in rollout trainer; do
        if [[ $role == rollout ]]; then count=$ROLLOUT_NODES cpus=$ROLLOUT_CPUS; else count=$TRAINER_NODES cpus=$TRAINER_CPUS; fi
        for (( i = 0; i < count; i++ )); do
            start_and_wait "$role-$i" --address "127.0.0.1:$GCS_PORT" --num-cpus "$cpus" \
                --resources "{\"$role\": $cpus}" --labels "role=$role" \
                --include-log-monitor false "${common[@]}" || { cmd_down >/dev/null; exit 1; }
            nodes=$(( nodes + 1 ))
        done
    done
    wait_listed
    trap - INT TERM
    echo "local Ray cluster up: $nodes nodes (head, $ROLLOUT_NODES x rollout {CPU: $ROLLOUT_CPUS, rollout: $ROLLOUT_CPUS}," \
         "$TRAINER_NODES x trainer {CPU: $TRAINER_CPUS, trainer: $TRAINER_CPUS}); state in $DIR"
    echo "dashboard: http://127.0.0.1:$DASHBOARD_PORT (loopback only)   GCS: 127.0.0.1:$GCS_PORT"
    echo "nodes registered on $(node_ip) (this machine's network address: Ray's servers listen there too," \
         "token required; see cluster/README.md)"
    echo "to submit jobs from this shell:"
    print_env | sed 's/^/  /'
}

# stop_nodes NAME...: SIGTERM to each node's `ray start --block` (it stops its own processes), all
# at once; after at most 30 s, SIGKILL to whatever of them and their descendants outlived it (an
# actor worker mid-call): by pid, never by name
stop_nodes() {
    local name pid rest=() pids=() names=()
    for name in "$@"; do
        if pid="$(node_pid "$name")"; then
            rest+=($(descendants "$pid"))
            pids+=("$pid"); names+=("$name")
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    for _ in $(seq 1 30); do
        local alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        (( alive )) || break
        sleep 1
    done
    for pid in "${pids[@]}" "${rest[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    for _ in $(seq 1 50); do  # a killed process can take a moment to exit (freeing its memory)
        local left=0
        for pid in "${pids[@]}" "${rest[@]}"; do
            [[ "$(ps -o stat= -p "$pid" 2>/dev/null)" =~ ^[^Z] ]] && left=1  # gone, or a zombie: done
        done
        (( left )) || break
        sleep 0.2
    done
    for name in "${names[@]}"; do echo "stopped $name (pid $(cat "$DIR/pids/$name.pid"))"; done
    for name in "$@"; do rm -f "$DIR/pids/$name.pid"; done
}

cmd_down() {
    [[ -d "$DIR/pids" ]] || { echo "no cluster state in $DIR"; return 0; }
    local f workers=()
    for f in "$DIR"/pids/*.pid; do
        [[ -f "$f" && "$(basename "$f")" != head.pid ]] && workers+=("$(basename "$f" .pid)")
    done
    # the worker nodes together, the head (GCS) last, so no node is left looking for a dead GCS
    (( ${#workers[@]} )) && stop_nodes "${workers[@]}"
    [[ -f "$DIR/pids/head.pid" ]] && stop_nodes head
    return 0
}

cmd_status() {
    local f name pid alive=0
    for f in "$DIR"/pids/*.pid; do
        [[ -f "$f" ]] || { echo "no cluster started from $DIR"; return 1; }
        name="$(basename "$f" .pid)"
        if pid="$(node_pid "$name")"; then echo "$name: running (pid $pid)"; alive=$(( alive + 1 )); else echo "$name: not running"; fi
    done
    (( alive > 0 )) || return 1
    "$RAY" status --address "127.0.0.1:$GCS_PORT" || true
    print_env
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) print_env ;;
    *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
esac
