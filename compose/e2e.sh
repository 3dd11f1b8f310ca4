#!/usr/bin/env bash
# `make compose-e2e`: the compose federation on a real Docker engine, end to end.
#
# Builds the images from a local base image (no registry pulls), brings up pki + server + 3 edges,
# runs a federation with mTLS and secure aggregation through the `run` service to completion,
# runs one more round with the edges behind the `impair` sidecar, checks that every edge daemon
# serves the exported model, and tears everything down (containers, networks, volumes).
# One line per step on stdout; each step's full output goes to $FEDGE_E2E_WORK/<step>.log and its
# tail is printed when it fails. Exit status 0 only if every step passed.
#
# Engine: the one `docker info` reaches; else, as root on Debian, docker.io + docker-compose are
# installed with apt and `dockerd --iptables=false --storage-driver=vfs` is started for this run
# and stopped (by its PID) at the end. Compose: `docker compose` (v2) if present, else
# `docker-compose` (1.29). Not part of `make test`: it takes many minutes (see compose/README.md).
#
# Variables: FEDGE_BASE_IMAGE (default fedge-base:bookworm, made with debootstrap when missing),
# FEDGE_E2E_WHEELS (wheel folder served to the build; default ~/.cache/fedge/e2e-wheels, filled with
# `pip download` on this host, whose Python must be 3.11 like the base image's), FEDGE_TAG (image
# tag, default e2e), FEDGE_E2E_WHEEL_PORT (where they are served, default 38417), FEDGE_E2E_PROJECT
# (compose project, default fedge-e2e), FEDGE_E2E_WORK (logs).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
BASE_IMAGE=${FEDGE_BASE_IMAGE:-fedge-base:bookworm}
WHEELS=${FEDGE_E2E_WHEELS:-${XDG_CACHE_HOME:-$HOME/.cache}/fedge/e2e-wheels}
export FEDGE_TAG=${FEDGE_TAG:-e2e}
PROJECT=${FEDGE_E2E_PROJECT:-fedge-e2e}
WORK=${FEDGE_E2E_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/fedge-compose-e2e.XXXXXX")}
mkdir -p "$WORK"
export FEDGE_EDGES=3 COMPOSE_PROJECT_NAME=$PROJECT DOCKER_BUILDKIT=0
# Removing a container copies nothing but frees a whole layer: slow on vfs, past 1.29's 60 s default.
export COMPOSE_HTTP_TIMEOUT=600 DOCKER_CLIENT_TIMEOUT=600
START=$SECONDS
DOCKERD_PID="" HTTP_PID="" UP=""

say() { printf '[%4ds] %s\n' $((SECONDS - START)) "$*"; }

fail() {
    say "FAIL: $*"
    exit 1
}

# step NAME CMD...: run CMD with its output in $WORK/NAME.log; on failure show the log's tail.
step() {
    local name=$1
    shift
    if ! "$@" >"$WORK/$name.log" 2>&1; then
        tail -n 40 "$WORK/$name.log" | sed 's/^/    | /'
        fail "$name (full log: $WORK/$name.log)"
    fi
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

compose() { "${COMPOSE[@]}" -f "$HERE/compose.yaml" -p "$PROJECT" "$@"; }

cleanup() {
    local code=$?
    trap - EXIT INT TERM
    if [ -n "$UP" ]; then
        teardown >"$WORK/teardown-on-exit.log" 2>&1 || true
    fi
    [ -n "$HTTP_PID" ] && kill "$HTTP_PID" 2>/dev/null && wait "$HTTP_PID" 2>/dev/null
    if [ -n "$DOCKERD_PID" ]; then
        kill "$DOCKERD_PID" 2>/dev/null || true
        for _ in $(seq 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
        say "engine: stopped the dockerd this run started (pid $DOCKERD_PID)"
    fi
    exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- engine -------------------------------------------------------------------------------------
start_engine() {
    if ! command -v dockerd >/dev/null || ! command -v docker-compose >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io docker-compose
    fi
    dockerd --iptables=false --storage-driver=vfs >"$WORK/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && return 0
        kill -0 "$DOCKERD_PID" 2>/dev/null || { cat "$WORK/dockerd.log"; return 1; }
        sleep 1
    done
    return 1
}

if docker info >/dev/null 2>&1; then
    say "engine: using the running Docker engine"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    start_engine >"$WORK/engine.log" 2>&1 || { tail -n 20 "$WORK/engine.log"; fail "engine: dockerd did not start"; }
    say "engine: started dockerd --iptables=false --storage-driver=vfs (pid $DOCKERD_PID)"
else
    fail "engine: no Docker engine answers and this is not root on Debian (start one, then rerun)"
fi
if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose); else COMPOSE=(docker-compose); fi
say "engine: Docker $(docker version -f '{{.Server.Version}}'), $("${COMPOSE[@]}" version --short 2>/dev/null || "${COMPOSE[@]}" version | head -n1) (${COMPOSE[*]})"

# --- images -------------------------------------------------------------------------------------
make_base() {
    command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap
    local root=$WORK/rootfs
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | docker import -c 'CMD ["/bin/bash"]' - "$BASE_IMAGE"
    rm -rf "$root"
}

if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    say "base: $BASE_IMAGE (present)"
elif [ "$BASE_IMAGE" = fedge-base:bookworm ]; then
    step base make_base
    say "base: made $BASE_IMAGE with debootstrap (Debian bookworm minbase + python3)"
else
    step base docker pull "$BASE_IMAGE"
    say "base: pulled $BASE_IMAGE"
fi

fetch_wheels() {
    python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), "need Python 3.11 (the base image has 3.11)"'
    mkdir -p "$WHEELS"
    python3 -m pip download -d "$WHEELS" -c "$REPO/constraints.txt" "torch==2.13.0" "setuptools>=77" "$REPO"
}
step wheels fetch_wheels
# A fixed port: build arguments are part of the builder's cache key, so a new port would rebuild.
PORT=${FEDGE_E2E_WHEEL_PORT:-38417}
python3 -c "import socket; socket.create_server(('127.0.0.1', $PORT)).close()" 2>/dev/null ||
    fail "wheels: port $PORT on 127.0.0.1 is taken (set FEDGE_E2E_WHEEL_PORT to a free one)"
python3 -m http.server --bind 127.0.0.1 --directory "$WHEELS" "$PORT" >"$WORK/http.log" 2>&1 &
HTTP_PID=$!
say "wheels: $(find "$WHEELS" -name '*.whl' | wc -l) wheels in $WHEELS, served on 127.0.0.1:$PORT"

for target in server edge; do
    t0=$SECONDS
    step "build-$target" nice -n 10 docker build --network host -f "$HERE/Dockerfile" --target "$target" \
        -t "fedge-$target:$FEDGE_TAG" --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg TORCH_INDEX_URL= \
        --build-arg "PIP_FIND_LINKS=http://127.0.0.1:$PORT/" --build-arg PIP_NO_INDEX=1 "$REPO"
    size=$(docker image inspect -f '{{.Size}}' "fedge-$target:$FEDGE_TAG")
    say "build: fedge-$target:$FEDGE_TAG in $((SECONDS - t0))s, $((size / 1000000)) MB"
done
kill "$HTTP_PID" && wait "$HTTP_PID" 2>/dev/null || true
HTTP_PID=""
# The images these builds replaced are left untagged: ~2 GB each with the vfs driver, they fill a
# disk in a few runs. Only fedge's (by label) are removed.
freed=$(docker image prune -f --filter label=org.fedge.image=1 | sed -n 's/^Total reclaimed space: //p')
say "build: removed fedge's replaced images (${freed:-0B})"

# --- federation ---------------------------------------------------------------------------------
containers() { docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" "$@"; }

teardown() {  # `down -v` keeps anonymous volumes of re-created containers: those are removed by name
    local anon
    anon=$(containers | xargs -r docker inspect -f '{{range .Mounts}}{{if eq .Type "volume"}}{{.Name}} {{end}}{{end}}')
    compose --profile impair --profile run down -v --remove-orphans
    for volume in $anon; do
        if docker volume inspect "$volume" >/dev/null 2>&1; then docker volume rm "$volume"; fi
    done
    docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT" | xargs -r docker volume rm
}

wait_healthy() {  # every container of the services named healthy (running, if it has no check); 300 s
    local deadline=$((SECONDS + 300)) states
    while :; do
        states=$(for svc in "$@"; do containers --filter "label=com.docker.compose.service=$svc" \
            | xargs -r docker inspect -f '{{.Name}} {{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}'; done)
        echo "$states"
        if [ -n "$states" ] && ! grep -qvE ' (healthy|running)$' <<<"$states"; then return 0; fi
        [ $SECONDS -lt $deadline ] || return 1
        sleep 3
    done
}

# A fleet port on loopback only; nothing else on this host is touched.
export FEDGE_FLEET_PORT=127.0.0.1:$(free_port) FEDGE_ENROLL_PORT=127.0.0.1:$(free_port)
UP=1
t0=$SECONDS
step up compose up -d --no-build
step healthy wait_healthy server edge
say "up: pki done, server and 3 edges healthy in $((SECONDS - t0))s ($(containers | wc -l) containers)"

RUN_ARGS=(fedge run start --server=server:9092 --admin-dir=/pki --task=digits --min-clients=3 --secagg)
summary() {  # "N rounds, accuracy A" from the newest run's summary.json; fails unless secure-aggregated
    compose exec -T server sh -c 'cat "$(ls -td /var/lib/fedge/runs/*/ | head -n1)summary.json"' >"$WORK/summary.json" &&
        python3 - "$WORK/summary.json" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
assert s["secure-aggregation"] is True, "the run was not secure-aggregated"
print(f"{s['rounds']} rounds, {s['accuracy-source']} {s['final-accuracy']:.3f}")
EOF
}

t0=$SECONDS
step run compose run --rm -T run "${RUN_ARGS[@]}" --rounds=3 --set=partition=iid
result=$(summary) || fail "run: no secure-aggregated summary.json in the server's state"
say "run: mTLS + SecAgg+, $result in $((SECONDS - t0))s"

# --- one round behind the impairment sidecar ----------------------------------------------------
# The edges are re-created dialing impair:9092 (their anonymous volumes, keys and certificates
# included, are kept); the sidecar forwards to server:9092 with FEDGE_IMPAIR's profile.
export FEDGE_SERVER_ADDR=impair:9092 FEDGE_ENROLL_ADDR=impair:9093
t0=$SECONDS
step impair-up compose --profile impair up -d --no-build impair edge
step impair-healthy wait_healthy impair edge
step impair-run compose run --rm -T run "${RUN_ARGS[@]}" --rounds=1 --set=partition=iid
impaired=$(summary) || fail "impair: no secure-aggregated summary.json"
say "impair: edges dial impair:9092; $impaired in $((SECONDS - t0))s"

# --- every daemon serves the exported model -----------------------------------------------------
PROBE=$(
    cat <<'EOF'
import json, subprocess, numpy as np
from sklearn.datasets import load_digits
d = load_digits()
np.save("/tmp/probe.npy", d.data[:200])
cmd = ["fedge", "client", "predict", "--input", "/tmp/probe.npy", "--state-dir", "/var/lib/fedge", "--json"]
out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
acc = float(np.mean(np.asarray(out["classes"]) == d.target[:200]))
print(f"model {out['model']}, {len(out['classes'])} predictions, accuracy {acc:.3f}")
assert acc > 0.5, "the served model predicts no better than chance"
EOF
)
for i in 1 2 3; do
    step "serve-$i" compose exec -T --index="$i" edge python -c "$PROBE"
    say "serve: edge replica $i: $(tail -n1 "$WORK/serve-$i.log")"
done

step impair-stop compose --profile impair stop impair
step impair-logs compose --profile impair logs --no-color impair
line=$(grep -- '-> server:9092:' "$WORK/impair-logs.log" | tail -n1) || fail "impair: no counters logged"
python3 - "$line" <<'EOF' || fail "impair: the sidecar carried no federation traffic: $line"
import re, sys
m = re.search(r"(\d+) connections, (\d+) bytes up, (\d+) bytes down", sys.argv[1])
assert m and int(m[1]) >= 3 and int(m[2]) > 0 and int(m[3]) > 0, sys.argv[1]
EOF
say "impair: ${line#*| }"

# --- teardown -----------------------------------------------------------------------------------
step teardown teardown
UP=""
left=$( (containers; docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT"; docker network ls -q --filter "label=com.docker.compose.project=$PROJECT") | wc -l)
[ "$left" = 0 ] || fail "teardown: $left containers/volumes/networks of $PROJECT left"
say "teardown: containers, network and volumes (named and anonymous) of $PROJECT removed"
say "PASS in $((SECONDS - START))s: final accuracy ${result##* } (3 rounds, mTLS + SecAgg+, 3 edges)"
