"""The command line's longer help texts: the program's and verify's descriptions, the exit codes and the
environment variables (wrapper.cli.requests reads them; the README's "Environment" table says the same)."""

from __future__ import annotations

PROG = "soci-wrapper"

DESCRIPTION = (
    "Build a SOCI index for a container image and push it to the image's registry, in one command:\n"
    "start containerd, pull the image (only what soci reads), run soci, push, report.\n\n"
    "The seed form (no subcommand) indexes an image in Amazon ECR:\n"
    f"  {PROG} --repo REPO --digest sha256:... --region REGION --account ACCOUNT "
    "[--soci-version V2 --output-tag TAG]\n"
    "which is the same as\n"
    f"  {PROG} index ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPO@sha256:..."
)

VERIFY_DESCRIPTION = """\
Check that IMAGE_REF's SOCI index serves lazy loading, at three levels:
  registry  the index is found the way the SOCI snapshotter finds it (v1: referrers API or the sha256-<hex>
            tag, subject = the platform's manifest; v2: the manifest's com.amazon.soci.index-digest, listed in
            the image index); media types and annotations; each zTOC annotated with a layer of the manifest,
            its blob present, digest-checked and describing that layer (size, compression, span size)
  content   soci decodes each zTOC (soci ztoc info) and reads a sample of files through it (soci ztoc
            get-file: the first, the last and the largest of each layer), compared byte for byte with the
            layer's tar stream from the registry
  consumer  soci-snapshotter-grpc, as a private containerd's snapshotter with its default pull modes, pulls
            the image lazily with the labels of a CRI pull: each indexed layer must be a FUSE mount, and files
            read through it match. A v1 index: what a stock snapshotter does with it (it ignores v1 since
            v0.10.0: a warning, not a failure), then those checks with [pull_modes.soci_v1] enable = true
By default the deepest level this machine supports runs; the report says which levels ran, and why not.
For a SOCI index v2, name the SOCI-enabled image (the --output-tag of `index --soci-version V2`)."""

EXIT_CODES_HELP = """\
exit codes:
  0    success (or the image was already indexed); with several platforms, at least one was indexed
       and the others are listed as not indexed (e.g. every layer under --min-layer-size)
  1    unexpected internal error (rerun with --debug for the traceback)
  2    bad usage or input (invalid reference, digest, option)
  3    authentication failed (registry or AWS)
  4    not found (repository, tag, digest, platform)
  5    registry unavailable or answered with an error
  6    containerd could not be started or reached
  7    soci failed
  8    nothing to index: every layer is smaller than --min-layer-size
  9    a required program (containerd, soci) is missing
  10   verify: a checked platform has no SOCI index
  11   verify: a SOCI index exists but is invalid (the report names the platform, layer and check)
  12   several images: at least one failed (each image's code and error are in the report)
  13   startup: the container exited with an error, or was not ready within --timeout
  130  interrupted
"""

ENV_HELP = """\
environment (flags win over these):
  SOCI_WRAPPER_IMAGE        image reference for 'index' and 'verify' (instead of IMAGE_REF)
  SOCI_WRAPPER_REPO         --repo          SOCI_WRAPPER_DIGEST      --digest
  SOCI_WRAPPER_TAG          --tag           SOCI_WRAPPER_ACCOUNT     --account (also AWS_ACCOUNT_ID)
  SOCI_WRAPPER_REGION       --region (also AWS_REGION, AWS_DEFAULT_REGION)
  SOCI_WRAPPER_SOCI_VERSION --soci-version  SOCI_WRAPPER_OUTPUT_TAG  --output-tag
  SOCI_WRAPPER_PLATFORMS    --platform (comma-separated), or 'all' for --all-platforms
  SOCI_BIN                  the soci binary (like --soci-bin)
  SOCI_WRAPPER_CACHE_DIR    --cache-dir (CodeBuild: list it under cache: paths: to keep it between builds)
  DOCKER_CONFIG             directory of the docker config.json used for registry credentials
  NO_COLOR                  plain output without colour
  'verify' reads them too, except the index settings SOCI_WRAPPER_SOCI_VERSION, _OUTPUT_TAG and _CACHE_DIR
"""

STARTUP_DESCRIPTION = """\
Start a container of IMAGE_REF and time it, in a containerd of its own (with runc), over containerd's API.

The image is pulled lazily through soci-snapshotter-grpc, as a node that runs SOCI images does (its default
pull modes: SOCI index manifest v2 only; prefetch on); --baseline also starts it from a full pull through
overlayfs and says how much sooner (or later) it started lazily. Ready means: the process exits with 0
(default), a line of its output matches --ready-log, or --ready-port accepts connections inside the
container's own network namespace. The container is not privileged, has no host mounts, no network but its
own loopback, containerd's default capabilities, and memory and process limits. --record FILE writes the
files it opened before it was ready, for `index --prefetch-files-json`.

  soci-wrapper startup registry.example.com/app:1.4-soci --baseline
  soci-wrapper startup registry.example.com/app:1.4-soci --ready-port 8080 --record prefetch.json
  soci-wrapper startup registry.example.com/tools:2 -- python3 -c 'import numpy'
"""
