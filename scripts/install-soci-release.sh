#!/usr/bin/env bash
# Installs the soci CLI from the official soci-snapshotter release tarball, the way CodeBuild users do, with
# no Go toolchain: downloads soci-snapshotter-<version>-linux-<arch>.tar.gz from the project's GitHub release,
# checks it against the sha256 pinned in wrapper/pins.env, and unpacks it. On success it prints the path of
# the installed `soci` on stdout (and nothing else), so that
#
#     SOCI_BIN="$(scripts/install-soci-release.sh)" && export SOCI_BIN
#
# hands it to scripts/bootstrap.sh and soci-wrapper.
#
# Nothing unverified is ever installed: the tarball is downloaded to a temporary file, its sha256 checked,
# unpacked into a temporary directory, its `soci --version` checked against the pinned version, and only then
# renamed into place. The install directory's name carries the tarball's sha256, so a directory that exists
# is complete; a second run finds it and downloads nothing.
#
# Environment (all optional):
#   SOCI_RELEASE_URL     download URL (default: the GitHub release asset for this machine's architecture)
#   SOCI_RELEASE_SHA256  expected sha256 of the tarball (default: SOCI_RELEASE_SHA256_<ARCH> of pins.env)
#   SOCI_RELEASE_DIR     where installs go (default: ${XDG_CACHE_HOME:-~/.cache}/soci-wrapper)
#
# Exit status: 0 installed (or already installed); 2 the release route is unavailable here (unsupported
# architecture, no checksum pinned for it, download failed): a caller may fall back to a source build;
# 3 refused: the download does not match the pinned sha256, or is not the pinned soci version.
# Messages go to stderr, one line each, prefixed "install-soci-release:".
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=wrapper/pins.env
source "$root/wrapper/pins.env"   # SOCI_VERSION, SOCI_RELEASE_SHA256_AMD64, SOCI_RELEASE_SHA256_ARM64

say() { printf 'install-soci-release: %s\n' "$*" >&2; }
unavailable() { say "$*"; exit 2; }
refuse() { say "$*"; exit 3; }

case "$(uname -m)" in
  x86_64 | amd64) arch=amd64 ;;
  aarch64 | arm64) arch=arm64 ;;
  *) unavailable "no soci release tarball for architecture $(uname -m)" ;;
esac

version="${SOCI_VERSION#v}"
asset="soci-snapshotter-${version}-linux-${arch}.tar.gz"
url="${SOCI_RELEASE_URL:-https://github.com/awslabs/soci-snapshotter/releases/download/${SOCI_VERSION}/${asset}}"
pin_name="SOCI_RELEASE_SHA256_${arch^^}"
expected="${SOCI_RELEASE_SHA256:-${!pin_name:-}}"
expected="${expected,,}"
if [[ -n "${SOCI_RELEASE_SHA256:-}" && ! "$expected" =~ ^[0-9a-f]{64}$ ]]; then
  refuse "SOCI_RELEASE_SHA256 '${SOCI_RELEASE_SHA256}' is not a sha256 (64 hex digits); nothing installed"
elif [[ ! "$expected" =~ ^[0-9a-f]{64}$ ]]; then
  unavailable "no sha256 pinned for $asset ($pin_name in wrapper/pins.env is '${!pin_name:-}');" \
    "set SOCI_RELEASE_SHA256 or pin it"
fi

install_root="${SOCI_RELEASE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/soci-wrapper}"
target="$install_root/soci-${SOCI_VERSION}-linux-${arch}-${expected:0:16}"

soci_ok() { [[ -x "$1" ]] && "$1" --version 2>/dev/null | grep -q " ${SOCI_VERSION} "; }

if soci_ok "$target/soci"; then
  printf '%s\n' "$target/soci"
  exit 0
fi

mkdir -p "$install_root"
work="$(mktemp -d "$install_root/.soci-release.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# Download. curl where there is one (CodeBuild images have it), else Python's urllib.
tarball="$work/$asset"
if command -v curl >/dev/null 2>&1; then
  if ! curl --fail --silent --show-error --location --retry 3 --retry-delay 2 --connect-timeout 20 \
       --max-time 600 --output "$tarball" "$url" 2>"$work/download.err"; then
    unavailable "download of $url failed: $(tail -n 1 "$work/download.err")"
  fi
elif ! python3 - "$url" "$tarball" 2>"$work/download.err" <<'PY'
import shutil, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=60) as response, open(sys.argv[2], "wb") as out:
    shutil.copyfileobj(response, out)
PY
then
  unavailable "download of $url failed: $(tail -n 1 "$work/download.err")"
fi

got="$(sha256sum "$tarball" | cut -d' ' -f1)"
if [[ "$got" != "$expected" ]]; then
  refuse "refused $url: sha256 $got, expected $expected; nothing installed"
fi

# Unpack into a staging directory next to the target (same filesystem, so the final rename is atomic).
stage="$work/stage"
mkdir "$stage"
if ! tar -xzf "$tarball" -C "$stage" --no-same-owner 2>"$work/tar.err"; then
  refuse "refused $url: not a readable tar.gz ($(tail -n 1 "$work/tar.err")); nothing installed"
fi
if ! soci_ok "$stage/soci"; then
  refuse "refused $url: it holds no soci $SOCI_VERSION at its top level; nothing installed"
fi
chmod -R go-w "$stage"

if ! mv -T "$stage" "$target" 2>/dev/null; then
  # Another run installed the same tarball meanwhile (the name carries its sha256): use that one.
  soci_ok "$target/soci" || refuse "could not install into $target; nothing installed"
fi
say "installed soci $SOCI_VERSION from $asset (sha256 verified) into $target"
printf '%s\n' "$target/soci"
