#!/usr/bin/env bash
# Build the kazhpc image from the repository root, with Apptainer or Docker; both recipes install the
# same pinned containers/requirements.txt (torch and deepspeed first, as in the README).
#
#   containers/build.sh apptainer [OUTPUT.sif]     # default: kazhpc-<version>.sif (needs apptainer)
#   containers/build.sh docker [TAG]               # default: kazhpc:<version>
#
# KAZHPC_DRY_RUN=1 prints the build command instead of running it. Point a cluster profile at the
# result: container: {runtime: apptainer, image: /scratch/.../kazhpc-<version>.sif}.
set -euo pipefail
cd "$(dirname "$0")/.."
version="$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n1)"
[[ -n "$version" ]] || { echo "build.sh: cannot read the version from pyproject.toml" >&2; exit 1; }

run() {
    echo "+ $*"
    [[ "${KAZHPC_DRY_RUN:-0}" == 1 ]] || "$@"
}

case "${1:-}" in
    apptainer)
        out="${2:-kazhpc-$version.sif}"
        command -v apptainer >/dev/null || [[ "${KAZHPC_DRY_RUN:-0}" == 1 ]] ||
            { echo "build.sh: apptainer not found (module load apptainer?)" >&2; exit 1; }
        run apptainer build --force "$out" containers/kazhpc.def
        ;;
    docker)
        tag="${2:-kazhpc:$version}"
        run docker build -f containers/Dockerfile --label "org.kazhpc.version=$version" -t "$tag" .
        ;;
    *)
        sed -n '2,9p' "$0" >&2
        exit 2
        ;;
esac
