"""The index and push stages: the real soci makes every index, in its own content store.

* V1: one ``soci create`` per platform, then ``soci push`` (retried when it fails for a transient reason).
* V2: ``soci convert``, then the SOCI-enabled image is brought into containerd (wrapper.soci.converted) and pushed
  by the project's own push (wrapper.image.push): blobs first, manifests, the tag last.

With a prefetch list (``request.prefetch_files``) soci adds a prefetch artifact per layer holding listed files;
the report lists them per platform, with the listed files found in no indexed layer. When the registry already
had an index for the image (``existing``), the new one is pushed only if its prefetch artifacts differ.

Both use soci's content store (``--content-store soci``): with containerd's, soci v0.15.0 loses every
platform's v1 index but the last to containerd's garbage collector, and only there can ``soci rebuild-db``
hand soci zTOCs reused from elsewhere (wrapper.soci.reuse).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field

from wrapper.containerd.client import ContainerdClient
from wrapper.core.errors import NothingToIndexError, SociError
from wrapper.core.models import SOCI_INDEX_V2, Descriptor, Platform
from wrapper.core.options import IndexRequest, prefetch_path
from wrapper.core.progress import short_digest
from wrapper.core.reference import Reference
from wrapper.core.report import (
    IndexReport,
    LayerEvents,
    PlatformIndex,
    PlatformSkipped,
    SociEvent,
    Stages,
    describe_index,
    note_missing,
)
from wrapper.image.pull import PullResult
from wrapper.image.push import ImagePusher
from wrapper.registry.client import RegistryClient
from wrapper.soci.converted import bring_into_containerd, restore_attestations
from wrapper.soci.prebuild import Prebuilder
from wrapper.soci.reuse import Reusable, remember, stage_for_soci, ztocs_of_index
from wrapper.soci.runner import PushAuth, Soci

NO_ZTOC = "soci made no zTOC (no layer it can index)"


@dataclass
class Indexing:
    """One run's index and push stages, over what the pull brought into containerd."""

    request: IndexRequest
    pulled: PullResult
    soci: Soci
    report: IndexReport
    stages: Stages
    reusable: dict[str, Reusable]
    # zTOCs being built while the pull went on (wrapper.soci.prebuild), and those it built (by layer digest).
    prebuild: Prebuilder | None = None
    prebuilt: dict[str, Reusable] = field(default_factory=dict)
    # The SOCI indexes the registry already holds for the image, and their prefetch artifacts (platform ->
    # layer digest -> artifact digest): a run with a prefetch list pushes its index only if its prefetch
    # artifacts differ from those (wrapper.soci.existing).
    existing: list[PlatformIndex] | None = None
    existing_prefetch: dict[str, dict[str, str]] = field(default_factory=dict)

    def hand_over(self) -> None:
        """zTOCs found elsewhere, and those built while the pull went on, go into soci's store with an index
        that carries them (one per platform, its subject that platform's manifest); ``soci rebuild-db``
        records them, and soci create and convert then take them as existing."""
        if self.prebuild is not None:
            self.prebuilt = self.prebuild.results()
        ready = {**self.prebuilt, **self.reusable}
        for image in self.pulled.selected:
            mine = [ready[x.digest] for x in image.layers if x.digest in ready]
            stage_for_soci(self.soci.root, image.manifest, mine)
        if ready:
            self.soci.rebuild_db()

    def _as_built(self, sink: Callable[[SociEvent], None]) -> Callable[[SociEvent], None]:
        """soci says "already exists" of the zTOCs built while the pull went on: for this run they are built."""

        def translate(event: SociEvent) -> None:
            if event.kind == "reused" and event.digest in self.prebuilt:
                event = dataclasses.replace(event, kind="built")
            sink(event)

        return translate

    def remember(self) -> None:
        """After the push: keep this run's zTOCs in the cache, if there is one."""
        blobs = self.soci.root / "content" / "blobs" / "sha256"
        remember(
            self.request.reuse,
            [
                (ztoc, blobs / ztoc.digest.removeprefix("sha256:"))
                for idx in self.report.indexes
                for ztoc in ztocs_of_index(json.loads(self.soci.read_blob(idx.soci_index_digest)))
            ],
        )

    @property
    def _sources(self) -> dict[str, str]:
        return {digest: item.source for digest, item in self.reusable.items()}

    def _no_index(self, platform: Platform, manifest: str) -> None:
        self.report.not_indexed.append(PlatformSkipped(str(platform), manifest, NO_ZTOC))
        self.stages.reporter.warn(f"{platform}: {NO_ZTOC}; no SOCI index")

    # -- prefetch -----------------------------------------------------------------------------------------
    def _unchanged(self) -> bool:
        """With a prefetch list, over an image the registry already has an index for: whether the index soci
        made now carries the same prefetch artifacts (per platform and layer) as the one in the registry. Then
        nothing is pushed and the image is reported as already indexed (with that index's digests)."""
        if self.existing is None:
            return False
        old = {idx.platform: idx for idx in self.existing}
        new = {idx.platform: idx for idx in self.report.indexes}
        if set(new) != set(old) or any(
            {p.layer: p.digest for p in idx.prefetch} != self.existing_prefetch.get(platform, {})
            for platform, idx in new.items()
        ):
            return False
        self.report.status = "already-indexed"
        self.report.indexes = [
            dataclasses.replace(
                idx,
                soci_index_digest=old[idx.platform].soci_index_digest,
                manifest_digest=old[idx.platform].manifest_digest,
            )
            for idx in self.report.indexes
        ]
        self.stages.reporter.info("    the registry's index has the same prefetch artifacts: nothing to push")
        return True

    def _missing_by_platform(self, missing: list[str]) -> None:
        """``soci convert`` warns once per platform of a listed file in none of its indexed layers, without
        naming the platform: with one platform (or a file missing on all) that is enough; otherwise the files
        of each platform's zTOCs (``soci ztoc info``) tell which platforms lack it."""
        indexes = self.report.indexes
        unclear = [p for p in dict.fromkeys(missing) if 0 < missing.count(p) < len(indexes)]
        names: dict[str, set[str]] = {}
        for idx in indexes:
            if unclear and idx.platform not in names:
                names[idx.platform] = {
                    prefetch_path(str(f.get("filename", "")))
                    for layer in idx.layers
                    if layer.ztoc
                    for f in _files(self.soci.ztoc_info(layer.ztoc))
                }
            idx.prefetch_not_found = [
                p for p in dict.fromkeys(missing) if p not in unclear or p not in names[idx.platform]
            ]

    # -- V1 ----------------------------------------------------------------------------------------------
    def v1(self, push_auth: PushAuth) -> None:
        # One `soci create` per platform: soci stops at the first platform with nothing to index (a layer
        # format it cannot read, say), which should not keep the other platforms from getting their index.
        request, pulled, soci, reporter = self.request, self.pulled, self.soci, self.stages.reporter
        indexed: list[Platform] = []
        nothing: NothingToIndexError | None = None
        with self.stages("index", "soci create (SOCI index manifest v1)"):
            self.hand_over()
            for image in pulled.selected:
                key = f"create {image.platform}"
                events = LayerEvents(reporter, key, image)
                reporter.steps_started(key, f"soci create {image.platform}", total=len(image.layers))
                try:
                    # Never --force: soci's root is new, and holds only the zTOCs handed over on purpose.
                    soci.create(
                        pulled.image_name,
                        platforms=[image.platform],
                        span_size=request.span_size,
                        min_layer_size=request.pull.min_layer_size,
                        prefetch_files=request.prefetch_files,
                        on_event=self._as_built(events),
                    )
                except NothingToIndexError as exc:
                    reporter.steps_finished(key, "no zTOC")
                    nothing = nothing or exc
                    self._no_index(image.platform, image.manifest.digest)
                    continue
                reporter.steps_finished(key, events.summary())
                digests = soci.index_digests(pulled.image_name, image.platform)
                if not digests:
                    raise SociError(f"soci create succeeded but recorded no index for {image.platform}")
                body = soci.read_blob(digests[0])
                self.report.indexes.append(
                    describe_index(
                        body, digests[0], image, events, self._sources, self.prebuilt, soci.read_blob
                    )
                )
                indexed.append(image.platform)
        if not indexed:
            assert nothing is not None
            raise nothing
        if self._unchanged():
            return
        with self.stages("push", f"soci push to {pulled.reference.registry}"):
            key = "push"
            reporter.steps_started(key, "soci push")

            def on_push(event: SociEvent) -> None:
                if event.kind == "retry":
                    reporter.warn(f"soci push: {event.detail}")
                elif event.kind in ("uploaded", "exists"):
                    verb = "pushed" if event.kind == "uploaded" else "already there"
                    reporter.step(key, f"{verb} {short_digest(event.digest)}")

            outcome = soci.push(pulled.image_name, push_auth, platforms=indexed, on_event=on_push)
            reporter.steps_finished(key, f"{outcome.attempts} attempt{'s' if outcome.attempts > 1 else ''}")
        self.report.push = {"tool": "soci push", "attempts": outcome.attempts, "seconds": outcome.seconds}
        self._warn_superseded()

    def _warn_superseded(self) -> None:
        """A V1 index pushed beside one the registry already listed for the image (its prefetch artifacts
        differed): soci-snapshotter takes the first SOCI index listed for a manifest, the older one, so the new
        one (and its prefetch artifacts) is used only once the older one is deleted from the repository."""
        for old in self.existing or ():
            new = next((i for i in self.report.indexes if i.platform == old.platform), None)
            if new is None or new.soci_index_digest == old.soci_index_digest:
                continue
            text = (
                f"{old.platform}: the registry already listed SOCI index {old.soci_index_digest} for this image; "
                f"soci-snapshotter uses the first index listed for a manifest, so {new.soci_index_digest} and its "
                "prefetch artifacts take effect only once the older indexes are deleted from the repository"
            )
            self.report.warnings.append(text)
            self.stages.reporter.warn(text)

    # -- V2 ----------------------------------------------------------------------------------------------
    def v2(self, client: ContainerdClient, registry: RegistryClient, original_index: bytes | None) -> None:
        request, pulled, soci, reporter = self.request, self.pulled, self.soci, self.stages.reporter
        assert request.output_tag
        ref = pulled.reference
        dest = Reference(ref.registry, ref.repository, tag=request.output_tag)
        # The converted image is written to containerd under this lease: nothing of it is collected before
        # the image record references it all.
        with client.lease():
            with self.stages("index", "soci convert (SOCI index manifest v2)"):
                self.hand_over()
                key = "convert"
                by_layer = {layer.digest: image for image in pulled.selected for layer in image.layers}
                events = {str(image.platform): LayerEvents(reporter, key, image) for image in pulled.selected}
                missing: list[str] = []  # one warning per platform that lacks the file (soci names none)
                noted: list[str] = []

                def on_event(event: SociEvent) -> None:
                    if event.kind == "prefetch-missing":
                        missing.append(event.detail)
                        note_missing(reporter, noted, event.detail)
                        return
                    image = by_layer.get(event.digest)
                    if image is not None:
                        events[str(image.platform)](event)

                reporter.steps_started(key, "soci convert", total=len(by_layer))
                soci.convert(
                    pulled.image_name,
                    str(dest),
                    platforms=[p.platform for p in pulled.selected],
                    span_size=request.span_size,
                    min_layer_size=request.pull.min_layer_size,
                    prefetch_files=request.prefetch_files,
                    on_event=self._as_built(on_event),
                )
                reporter.steps_finished(key, "; ".join(f"{p}: {e.summary()}" for p, e in events.items()))
                converted = soci.read_blob(client.images.get(str(dest)).target.digest)
                fixed = restore_attestations(original_index, converted)
                bring_into_containerd(soci, client, str(dest), fixed)
                entries = [
                    Descriptor.from_oci(m) for m in json.loads(fixed or converted).get("manifests", [])
                ]
                for image in pulled.selected:
                    soci_entry = next(
                        (
                            e
                            for e in entries
                            if e.artifact_type == SOCI_INDEX_V2
                            and e.platform
                            and image.platform.matches(e.platform)
                        ),
                        None,
                    )
                    if soci_entry is None:  # convert leaves out platforms with nothing it can index
                        self._no_index(image.platform, image.manifest.digest)
                        continue
                    body = soci.read_blob(soci_entry.digest)
                    platform_events = events[str(image.platform)]
                    self.report.indexes.append(
                        describe_index(
                            body,
                            soci_entry.digest,
                            image,
                            platform_events,
                            self._sources,
                            self.prebuilt,
                            soci.read_blob,
                        )
                    )
                self._missing_by_platform(missing)
            if self._unchanged():
                self.report.pushed_tag = request.output_tag
                return
            with self.stages("push", f"{dest}"):
                pushed = ImagePusher(client, registry, reporter=reporter).push(str(dest), dest)
        self.report.pushed_tag = request.output_tag
        self.report.output_digest = pushed.digest
        self.report.push = {
            "tool": "soci-wrapper",
            "blobs_uploaded": len(pushed.blobs_uploaded),
            "blobs_skipped": len(pushed.blobs_skipped),
            "bytes_uploaded": pushed.bytes_uploaded,
        }


def _files(info: dict[str, object]) -> list[dict[str, object]]:
    files = info.get("files")
    return [f for f in files if isinstance(f, dict)] if isinstance(files, list) else []
