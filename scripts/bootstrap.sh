#!/usr/bin/env bash
# Installs everything soci-wrapper and its tests need on a fresh Debian machine. Idempotent: quiet and fast
# when there is nothing to do.
#
#   1. Debian packages: containerd, runc, docker-registry (test registry), zlib1g-dev (soci's cgo),
#      apache2-utils (htpasswd for the auth tests), containerd's own .proto files (wire-compatibility test),
#      iproute2/util-linux (namespaces in the end-to-end tests).
#   2. The real soci CLI at the pinned release, built from the Go module proxy into .deps/bin/soci
#      (cached per version under ~/.cache/soci-wrapper so a fresh clone does not build it again).
#   3. .venv with the project installed editable and its test extras.
#
# Environment: SOCI_WRAPPER_SKIP_APT=1 skips step 1 (for machines where the packages come another way).
set -euo pipefail

SOCI_VERSION="v0.15.0"              # the one place the soci pin lives
SOCI_COMMIT="7716bd67e813"          # commit of the v0.15.0 tag; the cmd module has no tags of its own

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
log() { printf 'bootstrap: %s\n' "$*" >&2; }

# --- 1. Debian packages ---------------------------------------------------------------------------------
apt_packages=(containerd runc docker-registry zlib1g-dev apache2-utils golang-github-containerd-containerd-dev
              iproute2 util-linux ca-certificates openssl gcc)
if [[ "${SOCI_WRAPPER_SKIP_APT:-}" != 1 ]]; then
  missing=()
  for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
    log "installing Debian packages: ${missing[*]}"
    $sudo apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

# --- 2. soci ----------------------------------------------------------------------------------------------
mkdir -p .deps/bin
cache="${XDG_CACHE_HOME:-$HOME/.cache}/soci-wrapper/soci-$SOCI_VERSION"
error_file=".deps/soci-build-error.txt"

soci_ok() { [[ -x "$1" ]] && "$1" --version 2>/dev/null | grep -q "${SOCI_VERSION#v}"; }

build_soci() {
  local tmp out rc=0
  tmp="$(mktemp -d)"
  out="$tmp/build.log"
  # A separate bash, so that `set -e` holds (it is ignored in a subshell whose status is tested).
  SOCI_VERSION="$SOCI_VERSION" SOCI_COMMIT="$SOCI_COMMIT" BUILD_DIR="$tmp" bash -euo pipefail <<'BUILD' >"$out" 2>&1 || rc=$?
    cd "$BUILD_DIR"
    export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=1
    go mod init soci-wrapper/build-soci 2>/dev/null
    # cmd is a nested module that requires the root module as v0.0.0-local (replaced by ../ upstream);
    # point those versions at the release, and carry over the other replace directives of soci's go.mod files.
    go mod edit \
      -require="github.com/awslabs/soci-snapshotter@$SOCI_VERSION" \
      -replace="github.com/awslabs/soci-snapshotter@v0.0.0-local=github.com/awslabs/soci-snapshotter@$SOCI_VERSION" \
      -replace="github.com/awslabs/soci-snapshotter@v0.0.0=github.com/awslabs/soci-snapshotter@$SOCI_VERSION" \
      -replace="github.com/hashicorp/golang-lru=github.com/ktock/golang-lru@v0.5.5-0.20211029085301-ec551be6f75c" \
      -replace="cyphar.com/go-pathrs=github.com/cyphar/libpathrs/go-pathrs@v0.2.1"
    printf '//go:build tools\n\npackage tools\n\nimport _ "github.com/awslabs/soci-snapshotter/cmd/soci"\n' > tools.go
    go get "github.com/awslabs/soci-snapshotter/cmd@$SOCI_COMMIT"
    # soci's Makefile stamps the version at link time; without it `soci --version` says <unknown>.
    go build -trimpath -o "$BUILD_DIR/soci" \
      -ldflags "-X github.com/awslabs/soci-snapshotter/version.Version=$SOCI_VERSION -X github.com/awslabs/soci-snapshotter/version.Revision=$SOCI_COMMIT" \
      github.com/awslabs/soci-snapshotter/cmd/soci
BUILD
  if ((rc == 0)) && soci_ok "$tmp/soci"; then
    mkdir -p "$cache"
    install -m 0755 "$tmp/soci" "$cache/soci"
    rm -f "$error_file"
  else
    {
      echo "soci $SOCI_VERSION could not be built from the Go module proxy (exit $rc):"
      tail -n 20 "$out"
    } > "$error_file"
    log "WARNING: soci $SOCI_VERSION could not be built; tests that need soci will be skipped."
    sed 's/^/bootstrap:   /' "$error_file" >&2
  fi
  rm -rf "$tmp"
}

if ! soci_ok "$cache/soci"; then
  if command -v go >/dev/null 2>&1; then
    log "building soci $SOCI_VERSION (first time on this machine)"
    build_soci
  else
    echo "no Go toolchain on PATH: soci $SOCI_VERSION cannot be built" > "$error_file"
    log "WARNING: $(cat "$error_file")"
  fi
fi
if soci_ok "$cache/soci"; then
  ln -sf "$cache/soci" .deps/bin/soci
  rm -f "$error_file"
else
  rm -f .deps/bin/soci
fi

# --- 3. Python environment --------------------------------------------------------------------------------
py="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
  log "creating .venv"
  "$py" -m venv .venv
fi
stamp=".venv/.soci-wrapper-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  log "installing soci-wrapper and its test dependencies into .venv"
  pip_log="$(mktemp)"
  if ! { .venv/bin/python -m pip install -q --upgrade pip && .venv/bin/python -m pip install -q -e ".[test]"; } \
       >"$pip_log" 2>&1; then
    cat "$pip_log" >&2; rm -f "$pip_log"
    log "ERROR: pip install failed"; exit 1
  fi
  rm -f "$pip_log"
  echo "$want" > "$stamp"
fi
