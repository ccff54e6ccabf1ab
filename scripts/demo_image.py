"""Helpers for scripts/demo.sh: push the sample image, and show what the registry holds afterwards.

python scripts/demo_image.py push HOST REPO TAG DIR   -> prints REF@DIGEST
python scripts/demo_image.py show REF OUTPUT_TAG      -> SOCI indexes (v1 referrers) and the v2 tag
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.imagefactory import AMD64, ARM64, LayerSpec, build_index, push_image
from wrapper.core.models import SOCI_INDEX_DIGEST_ANNOTATION, SOCI_INDEX_V1, SOCI_INDEX_V2, Descriptor
from wrapper.core.reference import Reference
from wrapper.registry.auth import CredentialStore
from wrapper.registry.client import RegistryClient

MIB = 1 << 20


def push(host: str, repo: str, tag: str, directory: Path) -> int:
    # Two platforms, each with three layers: 12 MiB and 16 MiB get zTOCs, 2 MiB is under soci's 10 MiB minimum.
    layers = [LayerSpec(12 * MIB, seed=1), LayerSpec(2 * MIB, seed=2), LayerSpec(16 * MIB, seed=3)]
    index = build_index(directory, layers, platforms=(AMD64, ARM64))
    ref = Reference(host, repo, tag=tag)
    with RegistryClient(CredentialStore(use_ecr=False)) as client:
        digest = push_image(client, ref, index)
    print(f"{host}/{repo}@{digest}")
    return 0


def show(text: str, output_tag: str) -> int:
    ref = Reference.parse(text)
    with RegistryClient(CredentialStore(use_ecr=False)) as client:
        index = client.get_manifest(ref).json()
        print(f"{ref}")
        for entry in (Descriptor.from_oci(m) for m in index["manifests"]):
            print(f"  {entry.platform}: manifest {entry.digest}")
            for found in client.get_referrers(ref, entry.digest, artifact_type=SOCI_INDEX_V1):
                ztocs = len(client.get_manifest(ref, found.digest).json().get("layers", []))
                print(f"    SOCI index v1 {found.digest} ({ztocs} zTOCs)")
        try:
            out = client.get_manifest(ref, output_tag).json()
        except Exception as exc:  # the demo shows what is there, whatever it is
            print(f"{ref.registry}/{ref.repository}:{output_tag}: {exc}")
            return 0
        print(f"{ref.registry}/{ref.repository}:{output_tag} (SOCI-enabled image, index manifest v2)")
        for entry in (Descriptor.from_oci(m) for m in out["manifests"]):
            if entry.artifact_type == SOCI_INDEX_V2:
                print(f"  {entry.platform}: SOCI index v2 {entry.digest}")
            else:
                soci = entry.annotations.get(SOCI_INDEX_DIGEST_ANNOTATION, "no SOCI index")
                print(f"  {entry.platform}: manifest {entry.digest} -> {soci}")
    print(json.dumps({"ok": True}))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "push":
        sys.exit(push(sys.argv[2], sys.argv[3], sys.argv[4], Path(sys.argv[5])))
    if len(sys.argv) == 4 and sys.argv[1] == "show":
        sys.exit(show(sys.argv[2], sys.argv[3]))
    print(__doc__, file=sys.stderr)
    sys.exit(2)
