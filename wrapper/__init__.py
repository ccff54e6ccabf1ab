"""soci-wrapper: build and push SOCI indexes for container images in one dependable command.

The Python API is ``wrapper.api`` (entry points, requests, reports, errors). It is not re-exported here, so
that ``import wrapper`` stays cheap (no grpc, boto3, ...) for the command line and the scripts, and each name
has one import path whose types a checker sees (this package ships ``py.typed``).
"""

__version__ = "0.1.0"
