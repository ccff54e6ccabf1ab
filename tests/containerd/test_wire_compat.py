"""Our hand-written .proto files agree on the wire with containerd's own (Debian's 1.6 API files).

containerd's files are compiled with grpc_tools.protoc into a descriptor set; every message, field
(number, type, label, type name), enum value and service method (types, streaming) that we define must
match containerd's. Field and method names are compared too, since they appear in update masks and in
the gRPC path.
"""

from __future__ import annotations

import copy
import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import grpc_tools  # type: ignore[import-untyped]
import pytest
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

GOCODE = Path("/usr/share/gocode/src")
API = Path("github.com/containerd/containerd/api")
GOGO_ROOT = GOCODE / "github.com/gogo/protobuf"  # holds gogoproto/gogo.proto, imported by containerd's files

# Our module -> containerd's .proto file with the same package.
UPSTREAM = {
    "content": API / "services/content/v1/content.proto",
    "images": API / "services/images/v1/images.proto",
    "leases": API / "services/leases/v1/leases.proto",
    "namespace": API / "services/namespaces/v1/namespace.proto",
    "version": API / "services/version/v1/version.proto",
    "snapshots": API / "services/snapshots/v1/snapshots.proto",
    "descriptor": API / "types/descriptor.proto",
    "mount": API / "types/mount.proto",
    "containers": API / "services/containers/v1/containers.proto",
    "tasks": API / "services/tasks/v1/tasks.proto",
    "diff": API / "services/diff/v1/diff.proto",
    "process": API / "types/task/task.proto",
    "metrics": API / "types/metrics.proto",
}

Files = list[descriptor_pb2.FileDescriptorProto]


@dataclass
class Index:
    """Messages, enums and services of some .proto files by fully qualified name."""

    messages: dict[str, descriptor_pb2.DescriptorProto] = field(default_factory=dict)
    enums: dict[str, descriptor_pb2.EnumDescriptorProto] = field(default_factory=dict)
    services: dict[str, descriptor_pb2.ServiceDescriptorProto] = field(default_factory=dict)

    @classmethod
    def of(cls, files: Files) -> Index:
        index = cls()
        for f in files:
            index._add_messages(f".{f.package}", list(f.message_type))
            index.enums.update({f".{f.package}.{e.name}": e for e in f.enum_type})
            index.services.update({f".{f.package}.{s.name}": s for s in f.service})
        return index

    def _add_messages(self, scope: str, messages: list[descriptor_pb2.DescriptorProto]) -> None:
        for message in messages:
            name = f"{scope}.{message.name}"
            self.messages[name] = message
            self._add_messages(name, list(message.nested_type))
            self.enums.update({f"{name}.{e.name}": e for e in message.enum_type})


def _field_signature(f: descriptor_pb2.FieldDescriptorProto) -> tuple[object, ...]:
    return (f.number, f.type, f.label, f.type_name, f.oneof_index if f.HasField("oneof_index") else None)


def compare(ours: Files, theirs: Files) -> list[str]:
    """Every difference between what we define and containerd's definitions, as readable lines."""
    mine, upstream = Index.of(ours), Index.of(theirs)
    problems: list[str] = []
    for name, message in mine.messages.items():
        other = upstream.messages.get(name)
        if other is None:
            problems.append(f"message {name}: not in containerd's API")
            continue
        if message.options.map_entry != other.options.map_entry:
            problems.append(f"message {name}: map_entry differs")
        our_fields = {f.name: f for f in message.field}
        their_fields = {f.name: f for f in other.field}
        for fname in sorted(our_fields.keys() | their_fields.keys()):
            a, b = our_fields.get(fname), their_fields.get(fname)
            if a is None or b is None:
                problems.append(f"field {name}.{fname}: only in {'containerd' if a is None else 'ours'}")
            elif _field_signature(a) != _field_signature(b):
                problems.append(f"field {name}.{fname}: ours {_field_signature(a)} != {_field_signature(b)}")
    for name, enum in mine.enums.items():
        other_enum = upstream.enums.get(name)
        ours_values = {v.name: v.number for v in enum.value}
        theirs_values = {v.name: v.number for v in other_enum.value} if other_enum else None
        if ours_values != theirs_values:
            problems.append(f"enum {name}: ours {ours_values} != {theirs_values}")
    for name, service in mine.services.items():
        other_service = upstream.services.get(name)
        if other_service is None:
            problems.append(f"service {name}: not in containerd's API")
            continue
        our_methods = {m.name: m for m in service.method}
        their_methods = {m.name: m for m in other_service.method}
        for mname in sorted(our_methods.keys() | their_methods.keys()):
            ma, mb = our_methods.get(mname), their_methods.get(mname)
            if ma is None or mb is None:
                problems.append(f"method {name}/{mname}: only in {'containerd' if ma is None else 'ours'}")
                continue
            sig_a = (ma.input_type, ma.output_type, ma.client_streaming, ma.server_streaming)
            sig_b = (mb.input_type, mb.output_type, mb.client_streaming, mb.server_streaming)
            if sig_a != sig_b:
                problems.append(f"method {name}/{mname}: ours {sig_a} != {sig_b}")
    return problems


@pytest.fixture(scope="module")
def upstream_files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    """containerd's .proto files compiled into descriptors (with imports, for the message types they use)."""
    if not (GOCODE / API).is_dir() or not (GOGO_ROOT / "gogoproto/gogo.proto").is_file():
        pytest.fail(
            "containerd's .proto files are missing: install golang-github-containerd-containerd-dev "
            "(scripts/bootstrap.sh does)"
        )
    out = tmp_path_factory.mktemp("wire") / "containerd.pb"
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    args = [
        "protoc",
        f"-I{GOCODE}",
        f"-I{GOGO_ROOT}",
        f"-I{well_known}",
        "--include_imports",
        f"--descriptor_set_out={out}",
        *(str(p) for p in UPSTREAM.values()),
    ]
    assert protoc.main(args) == 0, "protoc could not compile containerd's .proto files"
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    wanted = {str(p) for p in UPSTREAM.values()}
    return [f for f in files if f.name in wanted]


@pytest.fixture(scope="module")
def our_files() -> Files:
    """The descriptors compiled into our checked-in stubs (what actually goes on the wire)."""
    files = []
    for module_name in UPSTREAM:
        module = importlib.import_module(f"wrapper.containerd._proto.{module_name}_pb2")
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        files.append(proto)
    return files


def test_our_protos_match_containerds(our_files: Files, upstream_files: Files) -> None:
    assert len(upstream_files) == len(UPSTREAM)
    assert sorted(f.package for f in our_files) == sorted(f.package for f in upstream_files)
    assert compare(our_files, upstream_files) == []
    mine = Index.of(our_files)
    # Sanity: the comparison really covered the types we rely on.
    assert ".containerd.services.content.v1.WriteContentRequest" in mine.messages
    assert ".containerd.services.images.v1.Image.LabelsEntry" in mine.messages
    assert ".containerd.services.content.v1.WriteAction" in mine.enums
    assert ".containerd.services.containers.v1.Container.Runtime" in mine.messages
    assert ".containerd.services.tasks.v1.CreateTaskRequest" in mine.messages
    assert ".containerd.v1.types.Status" in mine.enums
    assert len(mine.services) == 9


@pytest.mark.parametrize(
    "change",
    [
        "field_number",
        "field_type",
        "field_label",
        "field_type_name",
        "missing_field",
        "streaming",
        "method_type",
        "enum_value",
        "package",
    ],
)
def test_comparison_detects_a_deliberate_change(our_files: Files, upstream_files: Files, change: str) -> None:
    altered = copy.deepcopy(our_files)
    content = next(f for f in altered if f.package == "containerd.services.content.v1")
    images = next(f for f in altered if f.package == "containerd.services.images.v1")
    write_req = next(m for m in content.message_type if m.name == "WriteContentRequest")
    image = next(m for m in images.message_type if m.name == "Image")
    write = next(m for m in content.service[0].method if m.name == "Write")
    fields = {f.name: f for f in write_req.field}
    types = descriptor_pb2.FieldDescriptorProto
    if change == "field_number":
        fields["offset"].number = 8
    elif change == "field_type":
        fields["offset"].type = types.TYPE_INT32
    elif change == "field_label":
        fields["ref"].label = types.LABEL_REPEATED
    elif change == "field_type_name":
        next(f for f in image.field if f.name == "created_at").type_name = ".google.protobuf.Duration"
    elif change == "missing_field":
        write_req.field.remove(fields["labels"])
    elif change == "streaming":
        write.server_streaming = False
    elif change == "method_type":
        write.output_type = ".containerd.services.content.v1.StatusResponse"
    elif change == "enum_value":
        content.enum_type[0].value[2].number = 3
    elif change == "package":
        images.package = "containerd.services.images.v2"
    assert compare(our_files, upstream_files) == []
    problems = compare(altered, upstream_files)
    assert problems, f"{change} went unnoticed"
