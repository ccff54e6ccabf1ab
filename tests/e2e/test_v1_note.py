"""``index`` with SOCI index manifest v1 says, once per run, that a stock soci-snapshotter-grpc (v0.10 and later)
does not load it lazily, and which config line does: a progress line on stderr (none with --quiet), and an
entry of ``--json``'s ``warnings`` (the report's; a many-image run's own list, not each image's). V2 runs and
other images say nothing. Real registry, containerd and soci."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.registry import RegistryServer
from tests.helpers import MIB, push, run_cli, seed_for
from tests.imagefactory import LayerSpec, build_image
from wrapper.core.reference import Reference
from wrapper.registry.auth import CredentialStore
from wrapper.registry.client import RegistryClient
from wrapper.soci.pullmodes import V1_NOTE

pytestmark = pytest.mark.soci

NOTE_LINE = f"note: {V1_NOTE}"


def _image(tmp_path: Path, registry: RegistryServer, repo: str, seed: int) -> str:
    """A one-layer image (2 MiB: indexed) pushed to ``repo``, by digest."""
    with RegistryClient(CredentialStore(use_ecr=False)) as client:
        return str(push(registry, client, repo, build_image(tmp_path, [LayerSpec(2 * MIB, seed=seed)])))


def _index(soci_bin: str, work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = run_cli(
        "index", *args, "--soci-bin", soci_bin, "--min-layer-size", "1MiB", "--work-dir", str(work)
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def _notes(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """The stderr lines that carry the note."""
    return [line for line in proc.stderr.splitlines() if V1_NOTE in line]


def _json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    doc = json.loads(proc.stdout)
    assert isinstance(doc, dict)
    return doc


def test_the_note_is_the_facts() -> None:
    """What the note says: the snapshotter's default since v0.10.0, the config line, V2 as the way round."""
    assert "soci-snapshotter-grpc (v0.10.0 and later) does not load SOCI index manifest v1 lazily" in V1_NOTE
    assert "[pull_modes.soci_v1] enable = true" in V1_NOTE and "config.toml" in V1_NOTE
    assert "--soci-version V2" in V1_NOTE and "\n" not in V1_NOTE


def test_a_v1_run_notes_it_once_plain_json_and_not_quiet(
    tmp_path: Path, registry: RegistryServer, soci_bin: str, request
) -> None:
    ref = _image(tmp_path, registry, "note/one", seed_for(request))
    work = tmp_path / "work"

    plain = _index(soci_bin, work, ref)  # indexes it: plain progress lines on stderr (not a terminal)
    assert _notes(plain) == [NOTE_LINE]
    assert V1_NOTE not in plain.stdout  # the summary table stays the summary

    as_json = _json(indexed := _index(soci_bin, work, ref, "--json", "--force"))
    assert as_json["status"] == "indexed" and as_json["soci_version"] == "V1"
    assert as_json["warnings"] == [V1_NOTE]
    assert _notes(indexed) == [NOTE_LINE]

    # Already indexed: the index the registry has is still v1, so the note still holds.
    again = _json(found := _index(soci_bin, work, ref, "--json"))
    assert again["status"] == "already-indexed" and again["warnings"] == [V1_NOTE]
    assert _notes(found) == [NOTE_LINE]

    quiet = _index(soci_bin, work, ref, "--quiet", "--json")
    assert _notes(quiet) == [] and V1_NOTE not in quiet.stderr
    assert _json(quiet)["warnings"] == [V1_NOTE]  # the report is the same; only the progress line goes
    quiet_plain = _index(soci_bin, work, ref, "--quiet")
    assert V1_NOTE not in quiet_plain.stderr and V1_NOTE not in quiet_plain.stdout


def test_a_v2_run_and_a_soci_artifact_say_nothing(
    tmp_path: Path, registry: RegistryServer, soci_bin: str, request
) -> None:
    ref = Reference.parse(_image(tmp_path, registry, "note/v2", seed_for(request)))
    work = tmp_path / "work"
    v2 = _index(soci_bin, work, str(ref), "--soci-version", "V2", "--output-tag", "v1-soci", "--json")
    assert _json(v2)["warnings"] == [] and _notes(v2) == []
    # The SOCI-enabled image is no image to index (V1 asked): nothing made, so nothing to note.
    output = _index(soci_bin, work, str(Reference(ref.registry, ref.repository, tag="v1-soci")), "--json")
    assert _json(output)["status"] == "not-an-image"
    assert _json(output)["warnings"] == [] and _notes(output) == []


def test_many_images_note_it_once_per_run(
    tmp_path: Path, registry: RegistryServer, soci_bin: str, request
) -> None:
    seed = seed_for(request)
    refs = [_image(tmp_path, registry, f"note/many-{i}", seed + i) for i in range(3)]
    work = tmp_path / "work"
    proc = _index(soci_bin, work, *refs, "--json")
    doc = _json(proc)
    assert doc["summary"]["indexed"] == 3
    assert doc["warnings"] == [V1_NOTE]  # the run's, once
    assert [image["warnings"] for image in doc["images"]] == [[], [], []]  # not once per image
    assert _notes(proc) == [NOTE_LINE]  # unprefixed: it is the run's, not an image's

    quiet = _index(soci_bin, work, *refs, "--quiet", "--json")
    assert _json(quiet)["summary"]["already_indexed"] == 3 and _json(quiet)["warnings"] == [V1_NOTE]
    assert V1_NOTE not in quiet.stderr
