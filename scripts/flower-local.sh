#!/usr/bin/env bash
# A loopback rehearsal of a Flower deployment on this machine: one SuperLink and N SuperNodes on free
# ports of 127.0.0.1 (plain text, --insecure: loopback only), then `flwr run` of the fedpilot app.
#
#   scripts/flower-local.sh N [config.yaml]
#
# SuperNode i declares partition-id=i num-partitions=N and a memory budget cycling through
# $FEDPILOT_BUDGETS (default "150MiB 190MiB 256MiB"). config.yaml must say federation.num_clients: N;
# without one, the embedded default runs with num_clients N and outputs in the work folder.
# Each SuperNode runs with --isolation process next to a warm ClientApp executor of its own
# (python -m fedpilot.flower.warm: one process that serves all its messages, the model loaded once);
# FEDPILOT_WARM=0: Flower's default instead, a fresh ClientApp process per message.
# The warm executors share this machine's cores: FEDPILOT_CPU_SLOTS (default 1) of them compute at a time,
# each with cores / slots torch threads (1: the nodes take turns with every core, as the simulator's clients
# do, and give its numbers exactly; 0: every node computes at once with every core, oversubscribing them).
# The SuperLink keeps its state in memory (Flower's default: a SQLite file costs it about 2.5 x the CPU, which
# the nodes' training would share; docs/flower.md).
# Work folder (logs, FLWR_HOME, pids): $FLOWER_LOCAL_DIR, or a new temporary one.
# Every process the script starts runs in its own process group, and every group is stopped when the
# script ends: on success, on error, on Ctrl-C (SIGINT) and on SIGTERM.
set -euo pipefail

usage() { echo "usage: $0 N [config.yaml]  (N: number of SuperNodes, >= 1)" >&2; exit 2; }
[[ $# -ge 1 && $# -le 2 ]] || usage
N=$1
[[ $N =~ ^[1-9][0-9]*$ ]] || { echo "flower-local.sh: N must be a whole number >= 1, got '$N'" >&2; exit 2; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${FEDPILOT_BIN:-$ROOT/.venv/bin}
[[ -x $BIN/flower-superlink ]] || { echo "flower-local.sh: no $BIN/flower-superlink; run make install (or set FEDPILOT_BIN)" >&2; exit 2; }
export PATH=$BIN:$PATH HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} PYTHONUNBUFFERED=1
WARM=${FEDPILOT_WARM:-1}
[[ $WARM == 0 || $WARM == 1 ]] || { echo "flower-local.sh: FEDPILOT_WARM must be 0 or 1, got '$WARM'" >&2; exit 2; }
SLOTS=${FEDPILOT_CPU_SLOTS:-1}
[[ $SLOTS =~ ^[0-9]+$ ]] || { echo "flower-local.sh: FEDPILOT_CPU_SLOTS must be a whole number >= 0, got '$SLOTS'" >&2; exit 2; }
read -r -a BUDGETS <<< "${FEDPILOT_BUDGETS:-150MiB 190MiB 256MiB}"

WORK=${FLOWER_LOCAL_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/fedpilot-flower.XXXXXX")}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
export FLWR_HOME=$WORK/flwr-home
PIDS=()  # process-group leaders, one per started process

carriers() {  # carriers HOME: pids of live processes (this script aside) whose environment holds FLWR_HOME=HOME
    local marker="FLWR_HOME=$1" p found=()
    [ -d /proc ] || return 0
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        [ "$p" = "$$" ] && continue
        grep -qzxF -- "$marker" "/proc/$p/environ" 2>/dev/null && found+=("$p")
    done
    echo "${found[@]}"
}

groups_alive() {  # groups_alive [list]: true while a started process group still has a member (zombies included)
    local pid alive=()
    for pid in "${PIDS[@]}"; do kill -0 -- "-$pid" 2>/dev/null && alive+=("$pid"); done
    [ "${1:-}" = list ] && echo "${alive[*]}"
    ((${#alive[@]}))
}

stop_all() {
    local status=$? home=$FLWR_HOME left
    trap - EXIT INT TERM
    unset FLWR_HOME  # what this function starts from here on does not carry the marker
    if ((${#PIDS[@]})); then
        echo "flower-local.sh: stopping ${#PIDS[@]} processes" >&2
        for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
        for _ in $(seq 50); do  # up to 5 s for a clean exit
            groups_alive || break
            sleep 0.1
        done
        for pid in "${PIDS[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
        wait 2>/dev/null || true
        # A group outlives its leader while a member is still dying or is a zombie: a member whose
        # parent died first is reparented to init, which reaps on its own schedule (up to ~2 s seen
        # here). Return only once every group is gone, so "stopped" means gone when the script exits.
        local deadline=$((SECONDS + 15))
        while groups_alive && ((SECONDS < deadline)); do sleep 0.1; done
        groups_alive && echo "flower-local.sh: process groups still present 15 s after SIGKILL: $(groups_alive list)" >&2
    fi
    # Flower may start processes in sessions of their own (app processes); each still carries this
    # rehearsal's FLWR_HOME, which is unique to it: stop those too
    left=$(carriers "$home")
    if [ -n "$left" ]; then
        echo "flower-local.sh: stopping $(wc -w <<< "$left") more processes started by Flower" >&2
        kill -TERM $left 2>/dev/null || true
        local deadline=$((SECONDS + 3))  # by the clock: a scan of /proc is slow on a busy machine
        while [ -n "$(carriers "$home")" ] && ((SECONDS < deadline)); do sleep 0.1; done
        left=$(carriers "$home")
        [ -z "$left" ] || kill -KILL $left 2>/dev/null || true
    fi
    exit "$status"
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start() {  # start NAME CMD...: in its own session and process group, output in $WORK/NAME.log
    local name=$1; shift
    setsid "$@" > "$WORK/$name.log" 2>&1 < /dev/null &
    PIDS+=("$!")
    echo "$! $name" >> "$WORK/pids"
}

wait_for_port() {  # wait_for_port PORT PID NAME
    for _ in $(seq 600); do
        (exec 3<> "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || { echo "flower-local.sh: $3 exited before listening on $1; see $WORK/$3.log" >&2; tail -n 20 "$WORK/$3.log" >&2; exit 1; }
        sleep 0.1
    done
    echo "flower-local.sh: nothing listens on $1 after 60 s; see $WORK/$3.log" >&2
    exit 1
}

# the config: the one given (its num_clients must be N), or the default for N clients
if [[ $# -eq 2 ]]; then
    [[ -f $2 ]] || { echo "flower-local.sh: config file '$2' does not exist" >&2; exit 2; }
    CONFIG=$(cd "$(dirname "$2")" && pwd)/$(basename "$2")
else
    CONFIG=$WORK/config.yaml
    printf 'federation:\n  num_clients: %s\noutput_dir: %s/run\n' "$N" "$WORK" > "$CONFIG"
fi
read -r CLIENTS OUT < <("$BIN/python" -c '
import sys
from fedpilot.config import load_config
from fedpilot.core.errors import ConfigError
try:
    config = load_config(sys.argv[1])
except ConfigError as err:
    sys.exit(f"flower-local.sh: {err}")
print(config.federation.num_clients, config.output_dir)
' "$CONFIG")
[[ $CLIENTS == "$N" ]] || { echo "flower-local.sh: $CONFIG has federation.num_clients: $CLIENTS, but $N SuperNodes were asked for; make them equal" >&2; exit 2; }

read -r -a PORTS < <("$BIN/python" -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
' $((N + 1)))
LINK=${PORTS[0]}

mkdir -p "$FLWR_HOME"
printf '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:%s"\ninsecure = true\n' "$LINK" > "$FLWR_HOME/config.toml"

echo "flower-local.sh: work folder $WORK (logs, FLWR_HOME)" >&2
start superlink "$BIN/flower-superlink" --insecure --disable-runtime-dependency-installation --host 127.0.0.1 --port "$LINK"
wait_for_port "$LINK" "${PIDS[-1]}" superlink
ISOLATION=()
((WARM)) && ISOLATION=(--isolation process)
SHARING=()
((SLOTS)) && SHARING=(--cpu-slots "$SLOTS" --slot-dir "$WORK/cpu-slots" --torch-threads "$(( $(nproc) / SLOTS > 0 ? $(nproc) / SLOTS : 1 ))")
for ((i = 0; i < N; i++)); do
    budget=${BUDGETS[i % ${#BUDGETS[@]}]}
    start "supernode-$i" "$BIN/flower-supernode" --insecure --superlink "127.0.0.1:$LINK" --port "${PORTS[i + 1]}" \
        "${ISOLATION[@]}" --node-config "partition-id=$i num-partitions=$N memory-budget=\"$budget\""
    node=${PIDS[-1]}
    wait_for_port "${PORTS[i + 1]}" "$node" "supernode-$i"
    if ((WARM)); then  # the executor imports fedpilot from this repository, the code the run's app carries
        start "warm-$i" env "PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$BIN/python" -m fedpilot.flower.warm \
            --runtime-api-address "127.0.0.1:${PORTS[i + 1]}" --insecure --watch-pid "$node" "${SHARING[@]}"
    fi
    echo "flower-local.sh: SuperNode $i of $N, budget $budget, on port ${PORTS[i + 1]}$( ((WARM)) && echo ", warm ClientApp executor")" >&2
done

echo "flower-local.sh: flwr run (outputs in $OUT)" >&2
# The app staged in the work folder: what the FAB carries and nothing else (flwr run walks every file of the
# folder it is given, .venv included, before it filters; fedpilot/flower/stage.py)
env "PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$BIN/python" -m fedpilot.flower.stage "$WORK/app" > /dev/null
start flwr-run "$BIN/flwr" run "$WORK/app" local --run-config "config=\"$CONFIG\"" --stream
RUN=${PIDS[-1]}
tail -n +1 -f "$WORK/flwr-run.log" --pid "$RUN" &
wait "$RUN"  # interruptible: Ctrl-C runs the trap at once
"$BIN/python" -c '
import json, sys
from pathlib import Path
path = Path(sys.argv[1]) / "results.json"
results = json.loads(path.read_text()) if path.is_file() else {}
status = results.get("status")
if status != "finished":
    sys.exit(f"flower-local.sh: the run did not finish (status {status!r} in {path}); see the logs in {sys.argv[2]}")
last = results["rounds"][-1]
number, accuracy = last["round"], last["accuracy"]
print(f"flower-local.sh: finished: round {number} test accuracy {accuracy:.4f}; results in {path}", file=sys.stderr)
' "$OUT" "$WORK"
