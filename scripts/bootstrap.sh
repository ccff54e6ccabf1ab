#!/usr/bin/env bash
# Installs everything soci-wrapper and its tests need on a fresh Debian machine. Idempotent: quiet and fast
# when there is nothing to do.
#
#   1. Debian packages: containerd, runc, docker-registry (test registry), zlib1g-dev (soci's cgo),
#      apache2-utils (htpasswd for the auth tests), containerd's own .proto files (wire-compatibility test),
#      iproute2/util-linux (namespaces in the end-to-end tests), busybox-static (the shell of startup's test images).
#   2. The real soci CLI at the pinned release (wrapper/pins.env) into .deps/bin/soci: from $SOCI_BIN, the
#      per-version cache under ~/.cache/soci-wrapper, the upstream source tarball (sha256-checked), or the
#      Go module proxy, in that order.
#   3. Test-only programs, cached per version the same way: containerd 2.x (Go module proxy) into
#      .deps/containerd2/bin/containerd (not on PATH), and zot, a registry with the OCI referrers API (upstream
#      source tarball, sha256-checked), into .deps/bin/zot.
#   4. .venv with the project installed editable and its test extras.
#
# Environment: SOCI_WRAPPER_SKIP_APT=1 skips step 1 (for machines where the packages come another way);
# SOCI_WRAPPER_RUNTIME_ONLY=1 runs scripts/install.sh instead (the runtime install: the machine's containerd,
# soci from its release tarball, the package in .venv; no test-only package or program);
# SOCI_BIN names a soci to use; SOCI_SOURCE names the soci source tarball (default: ../shared/third_party/...);
# ZOT_SOURCE names the zot source tarball (default: ../shared/third_party/zot/...).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# shellcheck source=../wrapper/pins.env
source wrapper/pins.env   # SOCI_*, CONTAINERD2_*, ZOT_*: the one place the pins live
log() { printf 'bootstrap: %s\n' "$*" >&2; }
[[ "${SOCI_WRAPPER_RUNTIME_ONLY:-}" != 1 ]] || exec scripts/install.sh

# --- 1. Debian packages ---------------------------------------------------------------------------------
apt_packages=(containerd runc docker-registry zlib1g-dev apache2-utils golang-github-containerd-containerd-dev
              iproute2 util-linux ca-certificates openssl gcc busybox-static)
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
# scripts/install-soci-source.sh: $SOCI_BIN if it is soci of the pinned version, else the per-version cache
# under ~/.cache/soci-wrapper, else a build from the upstream source tarball (sha256-checked) or the Go module
# proxy. Where every route fails, .deps/soci-build-error.txt gives each route's reason.
mkdir -p .deps/bin
cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/soci-wrapper"
error_file=".deps/soci-build-error.txt"
if soci="$(scripts/install-soci-source.sh --error-file "$error_file")"; then
  ln -sfn "$soci" .deps/bin/soci
else
  rm -f .deps/bin/soci
  log "WARNING: $(head -n 1 "$error_file") (tests that need soci are skipped, or fail under CI=true)"
  sed 's/^/bootstrap:   /' "$error_file" >&2
fi

# --- 3. Test-only programs: containerd 2.x and zot ---------------------------------------------------------
# Each is built once per version into the cache under ~/.cache/soci-wrapper, like soci. A failed build does
# not stop bootstrap: its reason goes into .deps/<name>-build-error.txt (and is printed), and the tests that
# need the program are skipped with that reason (or fail under CI=true).
#   a. containerd $CONTAINERD2_VERSION, with `go install` from the Go module proxy, linked as
#      .deps/containerd2/bin/containerd: deliberately neither in .deps/bin nor on PATH, where it would silently
#      replace Debian's containerd 1.6 in every test and soci-wrapper run. Tests pass it explicitly.
#   b. zot $ZOT_VERSION, from the upstream source tarball ($ZOT_SOURCE, else ../shared/third_party/zot/ beside
#      the project) checked against its pinned sha256, built as that directory's README says; .deps/bin/zot.

containerd2_ok() { [[ -x "$1" ]] && "$1" --version 2>/dev/null | grep -q " ${CONTAINERD2_VERSION} ${CONTAINERD2_COMMIT}"; }
zot_ok() { [[ -x "$1" ]] && "$1" --version 2>&1 | grep -q "\"commit\":\"${ZOT_VERSION}-${ZOT_COMMIT}\""; }

# tool_build NAME VERSION BINARY CHECK SCRIPT: makes sure $cache_root/NAME-VERSION/BINARY exists and passes
# CHECK, else runs SCRIPT in a separate `bash -euo pipefail` in a temporary directory (BUILD_DIR; the binary
# must land in $OUT/BINARY) and installs the result there. On failure returns 1 with the reason in tool_error.
tool_build() {
  local name="$1" version="$2" binary="$3" check="$4" script="$5" dir tmp rc=0 started
  dir="$cache_root/$name-$version"
  tool_error=""
  "$check" "$dir/$binary" && return 0
  if ! command -v go >/dev/null 2>&1; then
    tool_error="no Go toolchain on PATH: $name $version cannot be built"
    return 1
  fi
  tmp="$(mktemp -d)"
  started=$SECONDS
  log "building $name $version (first time on this machine)"
  BUILD_DIR="$tmp" OUT="$tmp/out" bash -euo pipefail -c "$script" >"$tmp/build.log" 2>&1 || rc=$?
  if ((rc == 0)) && "$check" "$tmp/out/$binary"; then
    mkdir -p "$dir"
    install -m 0755 "$tmp/out/$binary" "$dir/$binary.new" && mv -f "$dir/$binary.new" "$dir/$binary"
    log "built $name $version in $((SECONDS - started)) s"
  elif ((rc == 0)); then
    tool_error="$name $version was built but is not the pinned release; its --version says: $(
      "$tmp/out/$binary" --version 2>&1 | head -n 3 | tr '\n' ' ')"
  else
    tool_error="$name $version could not be built (exit $rc); the end of its build log:
$(tail -n 20 "$tmp/build.log")"
  fi
  rm -rf "$tmp"
  [[ -z "$tool_error" ]]
}

# tool_install NAME VERSION BINARY LINK ERROR_FILE: after tool_build, link the cached binary as LINK and
# remove ERROR_FILE; or remove LINK, write tool_error into ERROR_FILE and print it.
tool_install() {
  local name="$1" version="$2" binary="$3" link="$4" error_file="$5"
  if [[ -z "$tool_error" ]]; then
    mkdir -p "$(dirname "$link")"
    ln -sfn "$cache_root/$name-$version/$binary" "$link"
    rm -f "$error_file"
  else
    rm -f "$link"
    printf '%s\n' "$tool_error" > "$error_file"
    log "WARNING: $name $version is not available (tests that need it are skipped, or fail under CI=true):"
    sed 's/^/bootstrap:   /' "$error_file" >&2
  fi
}

# a. containerd 2.x. The ldflags are what containerd's Makefile stamps (`containerd --version`, Version RPC).
CONTAINERD2_VERSION="$CONTAINERD2_VERSION" CONTAINERD2_COMMIT="$CONTAINERD2_COMMIT" \
  tool_build containerd "$CONTAINERD2_VERSION" containerd containerd2_ok '
    export GOTOOLCHAIN=local GOBIN="$OUT"
    pkg=github.com/containerd/containerd/v2
    go install -trimpath \
      -ldflags "-X $pkg/version.Version=$CONTAINERD2_VERSION -X $pkg/version.Revision=$CONTAINERD2_COMMIT -X $pkg/version.Package=github.com/containerd/containerd/v2" \
      "$pkg/cmd/containerd@$CONTAINERD2_VERSION"' || true
tool_install containerd "$CONTAINERD2_VERSION" containerd .deps/containerd2/bin/containerd \
  .deps/containerd2-build-error.txt

# b. zot. The source tarball is only needed when the cache has no zot of the pinned version.
zot_tarball="${ZOT_SOURCE:-$(dirname "$root")/shared/third_party/zot/zot-$ZOT_VERSION.tar.gz}"
tool_error=""
if ! zot_ok "$cache_root/zot-$ZOT_VERSION/zot"; then
  got=""
  [[ -f "$zot_tarball" ]] && got="$(sha256sum "$zot_tarball" | cut -d' ' -f1)" || true
  if [[ ! -f "$zot_tarball" ]]; then
    tool_error="zot source tarball $zot_tarball does not exist (set ZOT_SOURCE to the zot $ZOT_VERSION source tarball)"
  elif [[ "$got" != "$ZOT_SOURCE_SHA256" ]]; then
    tool_error="zot source tarball $zot_tarball has sha256 ${got:-(unreadable)}, expected $ZOT_SOURCE_SHA256; not used"
  else
    log "zot source tarball $zot_tarball: sha256 verified"
  fi
fi
if [[ -z "$tool_error" ]]; then
  # The flags of zot's Makefile for its minimal binary, which stamp the version into `zot --version`.
  TARBALL="$zot_tarball" ZOT_VERSION="$ZOT_VERSION" ZOT_COMMIT="$ZOT_COMMIT" \
    tool_build zot "$ZOT_VERSION" zot zot_ok '
      export GOTOOLCHAIN=local CGO_ENABLED=0 GOEXPERIMENT=jsonv2
      tar -xzf "$TARBALL" -C "$BUILD_DIR"
      cd "$BUILD_DIR/zot-${ZOT_VERSION#v}"
      info=zotregistry.dev/zot/v2/pkg/buildinfo
      go build -trimpath -o "$OUT/zot" -ldflags "-X $info.ReleaseTag=$ZOT_VERSION -X $info.Commit=$ZOT_VERSION-$ZOT_COMMIT -X $info.BinaryType=minimal -X $info.GoVersion=$(go env GOVERSION) -s -w" ./cmd/zot' || true
fi
tool_install zot "$ZOT_VERSION" zot .deps/bin/zot .deps/zot-build-error.txt

# c. soci-snapshotter-grpc, the snapshotter daemon that consumes SOCI indexes (`soci-wrapper verify`'s
#    consumer level and its tests), from the same source tarball as soci (sha256-checked, as in section 2),
#    cached next to soci as $cache_root/soci-$SOCI_VERSION/soci-snapshotter-grpc and linked as
#    .deps/bin/soci-snapshotter-grpc. Not fatal: .deps/soci-snapshotter-grpc-build-error.txt says why it is
#    missing.
snapshotter_ok() { [[ -x "$1" ]] && "$1" --version 2>/dev/null | grep -q " ${SOCI_VERSION} ${SOCI_COMMIT}"; }
snap_tarball="${SOCI_SOURCE:-$(dirname "$root")/shared/third_party/soci-snapshotter/soci-snapshotter-$SOCI_VERSION.tar.gz}"
tool_error=""
if ! snapshotter_ok "$cache_root/soci-$SOCI_VERSION/soci-snapshotter-grpc"; then
  got=""
  [[ -f "$snap_tarball" ]] && got="$(sha256sum "$snap_tarball" | cut -d' ' -f1)" || true
  if [[ ! -f "$snap_tarball" ]]; then
    tool_error="soci-snapshotter source tarball $snap_tarball does not exist (set SOCI_SOURCE to the soci-snapshotter $SOCI_VERSION source tarball)"
  elif [[ "$got" != "$SOCI_SOURCE_SHA256" ]]; then
    tool_error="soci-snapshotter source tarball $snap_tarball has sha256 ${got:-(unreadable)}, expected $SOCI_SOURCE_SHA256; not used"
  fi
fi
if [[ -z "$tool_error" ]]; then
  snapshotter_ok "$cache_root/soci-$SOCI_VERSION/soci-snapshotter-grpc" ||
    log "soci-snapshotter-grpc $SOCI_VERSION: building from $snap_tarball (sha256 verified)"
  TARBALL="$snap_tarball" \
    LDFLAGS="-X github.com/awslabs/soci-snapshotter/version.Version=$SOCI_VERSION -X github.com/awslabs/soci-snapshotter/version.Revision=$SOCI_COMMIT" \
    tool_build soci "$SOCI_VERSION" soci-snapshotter-grpc snapshotter_ok '
      export GOTOOLCHAIN=local CGO_ENABLED=1
      tar -xzf "$TARBALL" -C "$BUILD_DIR"
      src="$(find "$BUILD_DIR" -mindepth 1 -maxdepth 1 -type d | head -n 1)"
      cd "$src/cmd"
      go build -trimpath -ldflags "$LDFLAGS" -o "$OUT/soci-snapshotter-grpc" ./soci-snapshotter-grpc' ||
    tool_error="soci-snapshotter-grpc: $tool_error"
fi
# (tool_install would name it "soci" in its warning: the cache directory is soci's.)
snap_error=.deps/soci-snapshotter-grpc-build-error.txt
if [[ -z "$tool_error" ]]; then
  ln -sfn "$cache_root/soci-$SOCI_VERSION/soci-snapshotter-grpc" .deps/bin/soci-snapshotter-grpc
  rm -f "$snap_error"
else
  rm -f .deps/bin/soci-snapshotter-grpc
  printf '%s\n' "$tool_error" > "$snap_error"
  log "WARNING: soci-snapshotter-grpc $SOCI_VERSION is not available (verify's consumer level does not run;" \
      "tests that need it are skipped, or fail under CI=true):"
  sed 's/^/bootstrap:   /' "$snap_error" >&2
fi

# --- 4. Python environment --------------------------------------------------------------------------------
py="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
  log "creating .venv"
  "$py" -m venv .venv
fi
stamp=".venv/.soci-wrapper-installed"
target=".[test]"
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $target"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  log "installing soci-wrapper ($target) into .venv"
  pip_log="$(mktemp)"
  if ! { .venv/bin/python -m pip install -q --upgrade pip && .venv/bin/python -m pip install -q -e "$target"; } \
       >"$pip_log" 2>&1; then
    cat "$pip_log" >&2; rm -f "$pip_log"
    log "ERROR: pip install failed"; exit 1
  fi
  rm -f "$pip_log"
  echo "$want" > "$stamp"
fi
# soci-wrapper looks for soci and soci-snapshotter-grpc (after --soci-bin/--snapshotter-bin and SOCI_BIN/
# SOCI_SNAPSHOTTER_BIN) in its Python's scripts directory, then PATH: link the ones built above there.
for tool in soci soci-snapshotter-grpc; do
  if [[ -x ".deps/bin/$tool" ]]; then
    ln -sfn "$(readlink -f ".deps/bin/$tool")" ".venv/bin/$tool"
  else
    rm -f ".venv/bin/$tool"
  fi
done
