#!/usr/bin/env bash
# Finds or builds the soci CLI of the pinned release (wrapper/pins.env) without the release tarball: the
# routes scripts/bootstrap.sh uses, and scripts/install.sh's fallback when no release checksum is pinned.
# On success it prints the path of that soci on stdout (and nothing else):
#
#     soci="$(scripts/install-soci-source.sh --error-file .deps/soci-build-error.txt)"
#
# Routes, first usable wins; each failing route's reason goes into the report:
#   a. $SOCI_BIN, when it is a soci of the pinned version;
#   b. the per-version cache ${XDG_CACHE_HOME:-~/.cache}/soci-wrapper/soci-<version>/soci (built once per
#      machine: a fresh clone does not build again);
#   c. the upstream source tarball ($SOCI_SOURCE, else ../shared/third_party/soci-snapshotter/ beside the
#      project), checked against its pinned sha256 (SOCI_SOURCE_SHA256), built with the machine's Go (cgo:
#      gcc and zlib headers), then cached;
#   d. the Go module proxy (refused today for soci's nested `cmd` module; kept for machines where it works).
#
# Exit status: 0 found or built; 2 every route failed: the report ("soci <version> is not available; every
# route failed:" then "- <route>: <reason>" lines) goes into --error-file FILE when given (which a success
# removes), else to stderr. Progress lines go to stderr, prefixed "install-soci-source:".
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=../wrapper/pins.env
source "$root/wrapper/pins.env"   # SOCI_VERSION, SOCI_COMMIT, SOCI_SOURCE_SHA256
log() { printf 'install-soci-source: %s\n' "$*" >&2; }

error_file=""
case "${1:-}" in
  --error-file) error_file="${2:?--error-file needs a file}" ;;
  "") ;;
  *) log "usage: $0 [--error-file FILE]"; exit 64 ;;
esac

cache="${XDG_CACHE_HOME:-$HOME/.cache}/soci-wrapper/soci-$SOCI_VERSION"
reasons=()
ldflags="-X github.com/awslabs/soci-snapshotter/version.Version=$SOCI_VERSION -X github.com/awslabs/soci-snapshotter/version.Revision=$SOCI_COMMIT"

soci_ok() { [[ -x "$1" ]] && "$1" --version 2>/dev/null | grep -q " ${SOCI_VERSION} "; }

# run_build NAME SCRIPT: runs SCRIPT in a separate `bash -euo pipefail` (so that `set -e` holds) in a temporary
# directory, with OUT set to where the binary must land; on success installs it into the cache.
run_build() {
  local name="$1" script="$2" tmp rc=0 started
  tmp="$(mktemp -d)"
  started=$SECONDS
  BUILD_DIR="$tmp" OUT="$tmp/out" SOCI_VERSION="$SOCI_VERSION" SOCI_COMMIT="$SOCI_COMMIT" LDFLAGS="$ldflags" \
    bash -euo pipefail -c "$script" >"$tmp/build.log" 2>&1 || rc=$?
  if ((rc == 0)) && soci_ok "$tmp/out/soci"; then
    mkdir -p "$cache"
    install -m 0755 "$tmp/out/soci" "$cache/soci.new" && mv -f "$cache/soci.new" "$cache/soci"
    log "built soci $SOCI_VERSION from $name in $((SECONDS - started)) s"
  else
    reasons+=("$name: build failed (exit $rc): $(tail -n 8 "$tmp/build.log" | tr '\n' ' ')")
  fi
  rm -rf "$tmp"
}

build_from_source() {
  local tarball="$1" got
  if [[ ! -f "$tarball" ]]; then
    reasons+=("source tarball: $tarball does not exist (set SOCI_SOURCE to the soci-snapshotter $SOCI_VERSION source tarball)")
    return
  fi
  got="$(sha256sum "$tarball" | cut -d' ' -f1)"
  if [[ "$got" != "$SOCI_SOURCE_SHA256" ]]; then
    reasons+=("source tarball: $tarball has sha256 $got, expected $SOCI_SOURCE_SHA256; not used")
    return
  fi
  log "building soci $SOCI_VERSION from $tarball (sha256 verified)"
  TARBALL="$tarball" run_build "source tarball $tarball" '
    export GOTOOLCHAIN=local CGO_ENABLED=1
    tar -xzf "$TARBALL" -C "$BUILD_DIR"
    src="$(find "$BUILD_DIR" -mindepth 1 -maxdepth 1 -type d | head -n 1)"
    cd "$src/cmd"
    go build -trimpath -ldflags "$LDFLAGS" -o "$OUT/soci" ./soci'
}

build_from_proxy() {
  log "building soci $SOCI_VERSION from the Go module proxy"
  run_build "Go module proxy" '
    cd "$BUILD_DIR"
    export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=1
    go mod init soci-wrapper/build-soci 2>/dev/null
    # cmd is a nested module that requires the root module as v0.0.0-local (replaced by ../ upstream);
    # point those versions at the release, and carry over the other replace directives of soci'"'"'s go.mod.
    go mod edit \
      -require="github.com/awslabs/soci-snapshotter@$SOCI_VERSION" \
      -replace="github.com/awslabs/soci-snapshotter@v0.0.0-local=github.com/awslabs/soci-snapshotter@$SOCI_VERSION" \
      -replace="github.com/awslabs/soci-snapshotter@v0.0.0=github.com/awslabs/soci-snapshotter@$SOCI_VERSION" \
      -replace="github.com/hashicorp/golang-lru=github.com/ktock/golang-lru@v0.5.5-0.20211029085301-ec551be6f75c" \
      -replace="cyphar.com/go-pathrs=github.com/cyphar/libpathrs/go-pathrs@v0.2.1"
    printf "//go:build tools\n\npackage tools\n\nimport _ \"github.com/awslabs/soci-snapshotter/cmd/soci\"\n" > tools.go
    go get "github.com/awslabs/soci-snapshotter/cmd@$SOCI_COMMIT"
    go build -trimpath -o "$OUT/soci" -ldflags "$LDFLAGS" github.com/awslabs/soci-snapshotter/cmd/soci'
}

soci=""
if [[ -n "${SOCI_BIN:-}" ]]; then
  if soci_ok "$SOCI_BIN"; then soci="$SOCI_BIN"
  else reasons+=("SOCI_BIN=$SOCI_BIN: not an executable soci $SOCI_VERSION"); fi
fi
if [[ -z "$soci" ]] && soci_ok "$cache/soci"; then soci="$cache/soci"; fi
if [[ -z "$soci" ]]; then
  if ! command -v go >/dev/null 2>&1; then
    reasons+=("no Go toolchain on PATH: soci $SOCI_VERSION cannot be built from source")
  else
    build_from_source "${SOCI_SOURCE:-$(dirname "$root")/shared/third_party/soci-snapshotter/soci-snapshotter-$SOCI_VERSION.tar.gz}"
    soci_ok "$cache/soci" || build_from_proxy
    soci_ok "$cache/soci" && soci="$cache/soci"
  fi
fi

if [[ -n "$soci" ]]; then
  [[ -z "$error_file" ]] || rm -f "$error_file"
  printf '%s\n' "$soci"
  exit 0
fi
report="$(
  echo "soci $SOCI_VERSION is not available; every route failed:"
  printf -- '- %s\n' "${reasons[@]}"
)"
if [[ -n "$error_file" ]]; then
  mkdir -p "$(dirname "$error_file")"
  printf '%s\n' "$report" > "$error_file"
else
  printf '%s\n' "$report" >&2
fi
exit 2
