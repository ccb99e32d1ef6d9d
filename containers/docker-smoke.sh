#!/usr/bin/env bash
# Run one kazhpc job inside a Docker container, through `kazhpc submit` on the local SLURM cluster:
# sbatch → the job's `docker run ... python jobs/tokenizer_report.py --run-dir RUN` → MLflow.
#
#   bash slurm/local-cluster.sh start && bash containers/docker-smoke.sh
#
# Machines without a registry (like CI) cannot pull python:3.11-slim, so the image built here is
# small: a Debian bookworm root from debootstrap, imported with `docker import`. It holds the OS
# only; this checkout and its virtualenv (and the Python it was made from) are bound read-only at
# the same paths, so the job runs the code under test. The full image is containers/build.sh docker.
# As root; needs apt-get (docker.io, debootstrap) the first time. Stops the dockerd it started.
#
# Environment: KAZHPC_DOCKER_DIR (state, default ~/.cache/kazhpc/docker), PYTHON (default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd)"
DIR="${KAZHPC_DOCKER_DIR:-$HOME/.cache/kazhpc/docker}"
PY="${PYTHON:-$REPO/.venv/bin/python}"
SOCK="$DIR/docker.sock"
export DOCKER_HOST="unix://$SOCK"
mkdir -p "$DIR"
log() { echo "docker-smoke: $*"; }

for tool in dockerd docker debootstrap; do
    if ! PATH="$PATH:/usr/sbin" command -v "$tool" >/dev/null; then
        log "installing docker.io debootstrap"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker.io debootstrap >"$DIR/apt.log"
        break
    fi
done
[[ -f "${SLURM_CONF:-$HOME/.cache/kazhpc/slurm/slurm.conf}" ]] || { log "start the local SLURM first: bash slurm/local-cluster.sh start"; exit 1; }
export SLURM_CONF="${SLURM_CONF:-$HOME/.cache/kazhpc/slurm/slurm.conf}"

started=""
if ! docker info >/dev/null 2>&1; then
    # No bridge/iptables: the sandbox has no network to give containers (they run --network none).
    setsid "$(PATH="$PATH:/usr/sbin" command -v dockerd)" --data-root "$DIR/data" --exec-root "$DIR/exec" \
        --pidfile "$DIR/dockerd.pid" -H "unix://$SOCK" --bridge=none --iptables=false --ip6tables=false \
        --ip-forward=false --ip-masq=false --default-ulimit nofile=1024:20000 </dev/null >"$DIR/dockerd.log" 2>&1 &
    started=1
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
    docker info >/dev/null 2>&1 || { tail -20 "$DIR/dockerd.log"; log "dockerd did not start"; exit 1; }
    log "dockerd running (pid $(cat "$DIR/dockerd.pid"))"
fi
stop_dockerd() { [[ -n "$started" && -s "$DIR/dockerd.pid" ]] && kill "$(cat "$DIR/dockerd.pid")" 2>/dev/null || true; }
trap stop_dockerd EXIT

base_prefix="$("$PY" -c 'import sys; print(sys.base_prefix)')"
# The shared libraries Python's own modules (sqlite3, ssl, ctypes, lzma) and torch load;
# a Debian venv also needs Debian's Python itself. The base image's tag names this list.
extra="--include=libsqlite3-0,libssl3,libffi8,libbz2-1.0,liblzma5,zlib1g,libuuid1,libgomp1,libstdc++6"
[[ "$base_prefix" == /usr ]] && extra="$extra,python3.11"
base="kazhpc-base:bookworm-$(echo "$extra" | md5sum | cut -c1-8)"
if ! docker image inspect "$base" >/dev/null 2>&1; then
    log "debootstrap bookworm (minbase) into $DIR/rootfs"
    rm -rf "$DIR/rootfs"
    debootstrap --variant=minbase $extra bookworm "$DIR/rootfs" >"$DIR/debootstrap.log" 2>&1 ||
        { tail -20 "$DIR/debootstrap.log"; exit 1; }
    tar -C "$DIR/rootfs" -c . | docker import - "$base" >/dev/null
fi
context="$(mktemp -d)"
cat >"$context/Dockerfile" <<DOCKERFILE
FROM $base
LABEL org.kazhpc.smoke="1"
ENV PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
WORKDIR $REPO
DOCKERFILE
DOCKER_BUILDKIT=0 docker build -q -t kazhpc-smoke:latest "$context" >/dev/null
rm -rf "$context"
log "image kazhpc-smoke:latest: $(docker image inspect -f '{{.Size}}' kazhpc-smoke:latest | awk '{printf "%.0f MB", $1/1e6}')"

work="$(mktemp -d /tmp/kazhpc-docker-smoke.XXXXXX)"
binds="[$REPO]"
[[ "$base_prefix" != /usr ]] && binds="[$REPO, $base_prefix]"
cat >"$work/docker.yaml" <<PROFILE
name: local-docker
partition: debug
node: {gpus: 0, cpus: 2, memory_gb: 16}
environment: {DOCKER_HOST: "unix://$SOCK", HF_HUB_OFFLINE: "1"}
python: $PY
container: {runtime: docker, image: "kazhpc-smoke:latest", workdir: $REPO, binds: $binds, options: [--network, none]}
jobs:
  tokenizers: {time: "00:20:00", cpus: 1, mem_gb: 3}
PROFILE
"$REPO/.venv/bin/kazhpc" submit configs/pipelines/smoke.yaml "runs_root=$work/runs" "jobs=[tokenizers]" \
    "tokenizers.tokenizers=[llama3,tekken]" --cluster "$work/docker.yaml"
run_dir="$(ls -d "$work"/runs/smoke-*)"
"$REPO/.venv/bin/kazhpc" status "$run_dir" --wait --timeout 600
host="$("$PY" - "$work/runs/mlflow.db" <<'PYTHON'
import sys
from mlflow import MlflowClient
client = MlflowClient(f"sqlite:///{sys.argv[1]}")
(run,) = client.search_runs([client.get_experiment_by_name("kazhpc-smoke").experiment_id], "attributes.run_name = 'tokenizers'")
print(run.data.tags["kazhpc.host"])
PYTHON
)"
[[ "$host" != "$(hostname)" ]] || { log "the job ran on the host ($host), not in a container"; exit 1; }
grep -q "docker run --rm" "$run_dir"/slurm/sbatch-0/*tokenizers.sbatch
log "OK: the tokenizers job ran in container $host under SLURM; report: $run_dir/tokenizers/tokenizers.md"
