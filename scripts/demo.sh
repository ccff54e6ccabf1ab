#!/usr/bin/env bash
# The main job on an embedded default: a local registry on loopback, a sample two-platform image with
# layers above and below soci's minimum, then soci-wrapper V1 and V2 on it, and what the registry holds.
# Stops everything it started and removes its temporary files. Needs root (soci-wrapper starts containerd).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
[[ -x .venv/bin/soci-wrapper && -x .deps/bin/soci ]] || scripts/bootstrap.sh

tmp="$(mktemp -d)"
registry_pid=""
cleanup() {
  [[ -n "$registry_pid" ]] && kill "$registry_pid" 2>/dev/null && wait "$registry_pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

echo "== starting a registry on loopback"
.venv/bin/python -m tests.fixtures.registry registry --dir "$tmp/registry" > "$tmp/registry.json" &
registry_pid=$!
for _ in $(seq 200); do [[ -s "$tmp/registry.json" ]] && break; sleep 0.05; done
host="$(.venv/bin/python -c 'import json,sys; print(json.load(open(sys.argv[1]))["host"])' "$tmp/registry.json")"
echo "   registry at $host"

echo "== pushing a sample image (linux/amd64 + linux/arm64; layers of 12, 2 and 16 MiB)"
ref="$(.venv/bin/python scripts/demo_image.py push "$host" demo/app v1 "$tmp/image")"
echo "   $ref"

status=0
echo "== soci-wrapper index $ref --all-platforms   (SOCI index manifest v1)"
.venv/bin/soci-wrapper index "$ref" --all-platforms || status=$?
echo "== soci-wrapper index $ref --all-platforms --soci-version V2 --output-tag v1-soci"
.venv/bin/soci-wrapper index "$ref" --all-platforms --soci-version V2 --output-tag v1-soci || status=$?
echo "== running V1 again: nothing to do"
.venv/bin/soci-wrapper index "$ref" --all-platforms || status=$?

echo "== what the registry holds now"
.venv/bin/python scripts/demo_image.py show "$ref" v1-soci
exit "$status"
