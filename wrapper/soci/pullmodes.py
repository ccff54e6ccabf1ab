"""Which SOCI indexes a stock soci-snapshotter-grpc loads lazily, and the config line that changes it.

Since v0.10.0 the snapshotter's defaults (``config/config.toml`` of its source) are ``[pull_modes.soci_v1]
enable = false`` and ``[pull_modes.soci_v2] enable = true``: a SOCI index manifest v2 (a SOCI-enabled image, its
manifests annotated with their index) is loaded lazily; a v1 index (a referrer of the image's manifest) is not
even looked for, and the snapshotter hands the image to the container runtime, which pulls it whole. Upstream
recommends v2 (``docs/soci-index-manifest-v2.md``). ``index`` notes this once per V1 run; ``verify``'s consumer
level shows it (wrapper.verify.consumer).
"""

from __future__ import annotations

from wrapper.soci.snapshotter import SnapshotterConfig

V1_OFF_SINCE = "v0.10.0"  # the first soci-snapshotter-grpc release that ignores v1 indexes by default
SNAPSHOTTER_CONFIG_PATH = (
    "/etc/soci-snapshotter-grpc/config.toml"  # where the snapshotter reads it by default
)
V1_CONFIG_LINE = "[pull_modes.soci_v1] enable = true"  # two lines of TOML: the table, then the key

# The pull modes of a stock snapshotter (the rest of its config is the caller's: background fetch, prefetch).
DEFAULT_PULL_MODES = SnapshotterConfig(soci_v1=False, soci_v2=True)

V1_NOTE = (
    f"a stock soci-snapshotter-grpc ({V1_OFF_SINCE} and later) does not load SOCI index manifest v1 lazily "
    f"(its default pull modes take only v2): add {V1_CONFIG_LINE} to its config.toml "
    f"({SNAPSHOTTER_CONFIG_PATH}), or index with --soci-version V2"
)


def v1_config_hint() -> str:
    """What makes a snapshotter load v1 indexes lazily, in a few words."""
    return f"{V1_CONFIG_LINE} in its config.toml ({SNAPSHOTTER_CONFIG_PATH})"
