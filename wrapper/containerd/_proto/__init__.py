"""Generated gRPC stubs for containerd (scripts/gen-protos.sh). Do not edit."""
