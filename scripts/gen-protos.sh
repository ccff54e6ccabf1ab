#!/usr/bin/env bash
# Generates the Python gRPC stubs for our subset of containerd's API from protos/ into
# wrapper/containerd/_proto/. The stubs are checked in; tests/containerd/test_protos.py fails when they
# are stale, so run this after editing any .proto file.
#
#   scripts/gen-protos.sh [OUT_ROOT]    # OUT_ROOT defaults to the repository root
#
# The .proto files live under protos/wrapper/containerd/_proto/ and import each other by that path, so
# the generated imports ("from wrapper.containerd._proto import descriptor_pb2") are already correct
# for the installed package; nothing is rewritten afterwards.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out_root="${1:-$root}"
python="${PYTHON:-$root/.venv/bin/python}"
pkg="wrapper/containerd/_proto"

mkdir -p "$out_root/$pkg"
rm -f "$out_root/$pkg"/*_pb2.py "$out_root/$pkg"/*_pb2.pyi "$out_root/$pkg"/*_pb2_grpc.py

cd "$root/protos"
# grpc_tools.protoc adds the well-known types (google/protobuf/*.proto) to the include path itself.
"$python" -m grpc_tools.protoc -I . \
  --python_out="$out_root" --pyi_out="$out_root" --grpc_python_out="$out_root" \
  "$pkg"/*.proto

if [[ ! -f "$out_root/$pkg/__init__.py" ]]; then
  printf '"""Generated gRPC stubs for containerd (scripts/gen-protos.sh). Do not edit."""\n' \
    > "$out_root/$pkg/__init__.py"
fi
