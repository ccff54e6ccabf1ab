"""soci-wrapper: build and push SOCI indexes for container images in one dependable command.

The Python API is ``wrapper.api`` (entry points, requests, reports, errors). It is not re-exported here, so
that ``import wrapper`` stays cheap (no grpc, boto3, ...) for the command line and the scripts, and each name
has one import path whose types a checker sees (this package ships ``py.typed``).
"""

__version__ = "0.1.0"

# Every program soci-wrapper runs is started, and tied to its life, by one supervisor (standard library only):
# importing it installs it for wrapper.containerd, which may not import wrapper.system (wrapper/core/processes.py).
from wrapper.system import supervisor as _supervisor  # noqa: F401
