#!/usr/bin/env bash
# The runtime install: soci-wrapper ready to run, in seconds, with what the machine has. For CodeBuild
# (buildspec.yml), the GitHub Action (action.yml), a containerd VM or a laptop; scripts/bootstrap.sh is the
# development and test setup (SOCI_WRAPPER_RUNTIME_ONLY=1 scripts/bootstrap.sh runs this script).
#
#     scripts/install.sh [--venv DIR]        # then: sudo DIR/bin/soci-wrapper doctor
#
#   1. containerd and runc: the ones on PATH (containerd 1.6, 1.7 or 2.x), nothing installed for them. Where
#      containerd is missing and apt-get exists, Debian's/Ubuntu's `containerd` package (which brings runc);
#      elsewhere one line says what is missing and how to get it (exit 9).
#   2. soci of the pinned release (wrapper/pins.env): $SOCI_BIN when set (it must be that release); else the
#      official release tarball, sha256-checked (scripts/install-soci-release.sh; SOCI_RELEASE_SHA256 gives
#      the checksum where pins.env has none, SOCI_RELEASE_URL a mirror); where that route is unavailable (no
#      checksum, no download) the source build of scripts/install-soci-source.sh (cache, SOCI_SOURCE tarball,
#      Go module proxy; needs Go and cgo). Nothing unchecked is ever installed. Linked as DIR/bin/soci (and
#      DIR/bin/soci-snapshotter-grpc, which the release tarball also holds).
#   3. The soci-wrapper package and its runtime dependencies (no test extras) in the virtualenv DIR (default:
#      .venv beside this script's checkout; SOCI_WRAPPER_VENV), with the first Python >= 3.11 of $PYTHON,
#      python3, python3.13, python3.12, python3.11. A second run with the same sources does no pip work.
#
# Exit status: 0 ready; 1 a step failed (pip, venv: the output above says why); 2 bad usage; 3 the soci release
# tarball was refused (wrong sha256, or not the pinned soci): nothing installed; 9 a required program is
# missing (containerd, Python >= 3.11, soci) and this script cannot install it here: one line says which and
# how to get it. Messages go to stderr, prefixed "install:"; stdout stays empty.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=../wrapper/pins.env
source "$root/wrapper/pins.env"   # SOCI_VERSION
say() { printf 'install: %s\n' "$*" >&2; }
usage() { say "usage: scripts/install.sh [--venv DIR]"; exit 2; }

venv="${SOCI_WRAPPER_VENV:-$root/.venv}"
while (($#)); do
  case "$1" in
    --venv) [[ $# -ge 2 && -n "$2" ]] || usage; venv="$2"; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 0 ;;
    *) usage ;;
  esac
done
venv="$(realpath -m -- "$venv")"  # scripts in it name their interpreter by this path
started=$SECONDS
sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"

case "$(uname -m)" in x86_64 | amd64) arch=amd64 ;; aarch64 | arm64) arch=arm64 ;; *) arch="$(uname -m)" ;; esac

# --- 1. containerd and runc, and Python ----------------------------------------------------------------------
containerd_version() {  # "1.6.20~ds1" from "containerd github.com/containerd/containerd 1.6.20~ds1 ..."
  containerd --version 2>/dev/null | sed -n 's/^containerd [^ ]* v\{0,1\}\([0-9][^ ]*\).*/\1/p' | head -n 1
}
if ! command -v containerd >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  say "containerd is not on PATH: installing the distribution's containerd package (apt-get)"
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends containerd >/dev/null
fi

python_ok() { "$1" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
py=""
for candidate in ${PYTHON:-python3 python3.13 python3.12 python3.11}; do
  if command -v "$candidate" >/dev/null 2>&1 && python_ok "$candidate"; then py="$(command -v "$candidate")"; break; fi
done

problems=()
if ! command -v containerd >/dev/null 2>&1; then
  what="containerd"; command -v runc >/dev/null 2>&1 || what="containerd and runc"
  problems+=("$what not found on PATH and there is no apt-get to install them: on Amazon Linux run" \
    "'sudo dnf install -y containerd' (it brings runc); elsewhere unpack containerd-<version>-linux-$arch.tar.gz" \
    "from https://github.com/containerd/containerd/releases into /usr/local (its bin/ onto PATH) and put" \
    "runc.$arch from https://github.com/opencontainers/runc/releases on PATH as runc (containerd 1.6, 1.7 or 2.x)")
else
  version="$(containerd_version || true)"
  if [[ ! "$version" =~ ^(1\.([6-9]|[1-9][0-9])|[2-9])\. ]]; then
    problems+=("$(command -v containerd) is containerd '${version:-unknown}'; soci-wrapper needs 1.6, 1.7 or 2.x:" \
      "install a newer one (dnf/apt package containerd, or https://github.com/containerd/containerd/releases)")
  fi
fi
if [[ -z "$py" ]]; then
  first="${PYTHON:-python3}"
  if command -v "$first" >/dev/null 2>&1; then seen="$first is $("$first" -V 2>&1 | head -n 1 || true)"
  else seen="no $first on PATH"; fi
  problems+=("no Python >= 3.11 with venv ($seen):" \
    "on Amazon Linux 2023 run 'sudo dnf install -y python3.11', on Debian/Ubuntu 'apt-get install python3-venv'," \
    "or set PYTHON to one")
fi
if ((${#problems[@]})); then
  joined="$(printf '%s; ' "${problems[@]}")"
  say "cannot install soci-wrapper here: ${joined%; }; then run scripts/install.sh again"
  exit 9
fi
runc_note="no runc (index and verify run no containers)"
if command -v runc >/dev/null 2>&1; then
  runc_note="runc $(runc --version 2>/dev/null | sed -n '1s/^runc version //p' || true) at $(command -v runc)"
fi
say "containerd $(containerd_version || true) at $(command -v containerd), $runc_note, $("$py" -V 2>&1) at $py"

# --- 2. soci -------------------------------------------------------------------------------------------------
soci_ok() { [[ -x "$1" ]] && "$1" --version 2>/dev/null | grep -q " ${SOCI_VERSION} "; }
if [[ -n "${SOCI_BIN:-}" ]]; then
  if ! soci_ok "$SOCI_BIN"; then
    say "SOCI_BIN=$SOCI_BIN is not an executable soci $SOCI_VERSION: point it at soci $SOCI_VERSION, or unset it" \
      "to install the release tarball"
    exit 9
  fi
  soci="$SOCI_BIN"
else
  rc=0; soci="$("$root/scripts/install-soci-release.sh")" || rc=$?
  case "$rc" in
    0) ;;
    2)
      say "the soci release tarball is unavailable (above): trying the source build"
      report="$(mktemp)"
      if ! soci="$(SOCI_BIN="" "$root/scripts/install-soci-source.sh" --error-file "$report")"; then
        sed 's/^/install: /' "$report" >&2; rm -f "$report"
        say "soci $SOCI_VERSION is missing: set SOCI_RELEASE_SHA256 to the sha256 of" \
          "soci-snapshotter-${SOCI_VERSION#v}-linux-$arch.tar.gz (its .sha256sum file on the release page), or SOCI_BIN"
        exit 9
      fi
      rm -f "$report" ;;
    3) exit 3 ;;
    *) say "scripts/install-soci-release.sh failed (exit $rc)"; exit 1 ;;
  esac
fi

# --- 3. The package in its own virtualenv ----------------------------------------------------------------------
# The stamp names the sources and the Python: the same ones again need no pip run.
cd "$root"
sources="$( { sha256sum pyproject.toml README.md
              find wrapper -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum
            } | sha256sum | cut -c1-64)"
want="$sources $("$py" -c 'import sys; print(sys.version.split()[0])')"
stamp="$venv/.soci-wrapper-runtime"
if [[ ! -x "$venv/bin/python" ]] || ! python_ok "$venv/bin/python"; then
  say "creating the virtualenv $venv"
  "$py" -m venv --clear "$venv"
  rm -f "$stamp"
fi
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  # Built from a clean copy of the sources: an in-tree build would leave build/ and *.egg-info in the checkout,
  # and setuptools would put files left in build/ by an older build into the package.
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  tar --exclude=__pycache__ --exclude='*.pyc' -cf - pyproject.toml README.md wrapper | tar -xf - -C "$work"
  say "installing soci-wrapper into $venv (pip)"
  rm -f "$stamp"
  if ! "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-input "$work" >"$work/pip.log" 2>&1; then
    sed 's/^/install: pip: /' "$work/pip.log" >&2
    say "pip install failed (above); nothing else changed"
    exit 1
  fi
  echo "$want" > "$stamp"
fi
ln -sfn "$soci" "$venv/bin/soci"
if [[ -x "$(dirname "$soci")/soci-snapshotter-grpc" ]]; then
  ln -sfn "$(dirname "$soci")/soci-snapshotter-grpc" "$venv/bin/soci-snapshotter-grpc"
fi
if ! "$venv/bin/soci-wrapper" --version >/dev/null 2>&1; then
  say "$venv/bin/soci-wrapper does not run: $("$venv/bin/soci-wrapper" --version 2>&1 | tail -n 1)"
  exit 1
fi
say "ready in $((SECONDS - started)) s: $venv/bin/soci-wrapper, soci $SOCI_VERSION at $soci (linked as $venv/bin/soci);" \
  "check with: sudo $venv/bin/soci-wrapper doctor"
