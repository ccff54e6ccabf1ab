"""The runtime spec ``startup`` writes from an image config: what runs, as whom, with which environment, and
the confinement (namespaces, mounts, capabilities, masked paths, limits). Pure logic."""

from __future__ import annotations

import pytest

from wrapper.core.errors import UsageError
from wrapper.startup.spec import (
    DEFAULT_CAPABILITIES,
    DEFAULT_PATH,
    ImageConfig,
    Limits,
    RunSettings,
    User,
    build_spec,
    merge_env,
    needs_lookup,
    parse_env,
    process_args,
    resolve_user,
)

PASSWD = """root:x:0:0:root:/root:/bin/sh
# a comment
app:x:1000:1001:the app:/home/app:/bin/sh
nohome:x:1002:1002::::
broken:x:notanumber:0::/:/bin/sh
"""
GROUP = """root:x:0:
appgroup:x:1001:
extra:x:2000:app,other
audio:x:29:app
other:x:3000:someone
"""


def _config(**kwargs: object) -> ImageConfig:
    document = {
        "config": {
            "Entrypoint": ["/entry"],
            "Cmd": ["--serve"],
            "Env": ["PATH=/opt/bin", "A=1"],
            "WorkingDir": "/srv",
            "User": "app",
            **kwargs,
        }
    }
    return ImageConfig.from_document(document)


def test_the_image_config_is_read_with_missing_and_null_parts() -> None:
    config = _config()
    assert config == ImageConfig(("/entry",), ("--serve",), ("PATH=/opt/bin", "A=1"), "/srv", "app")
    assert ImageConfig.from_document({}) == ImageConfig()
    assert ImageConfig.from_document({"config": None}) == ImageConfig()
    assert ImageConfig.from_document({"config": {"Cmd": None, "Entrypoint": "not a list"}}) == ImageConfig()


def test_a_command_replaces_cmd_and_keeps_the_entrypoint() -> None:
    config = _config()
    assert process_args(config, None) == ["/entry", "--serve"]
    assert process_args(config, ("--check", "x")) == ["/entry", "--check", "x"]
    with pytest.raises(UsageError, match="no Entrypoint or Cmd"):
        process_args(ImageConfig(), None)
    with pytest.raises(UsageError, match="give the command after --"):
        process_args(ImageConfig(cmd=("/bin/sh",)), ())


def test_env_flags_replace_image_keys_and_path_and_home_are_filled_in() -> None:
    user = User(home="/home/app")
    assert merge_env(["PATH=/opt/bin", "A=1"], ["A=2", "B=x=y"], user) == [
        "PATH=/opt/bin",
        "A=2",
        "B=x=y",
        "HOME=/home/app",
    ]
    assert merge_env([], [], User()) == [DEFAULT_PATH, "HOME=/"]
    assert merge_env(["HOME=/data"], [], user) == [DEFAULT_PATH, "HOME=/data"]


@pytest.mark.parametrize("bad", ["NOEQUALS", "=value", "A\0B=1"])
def test_bad_env_flags_are_usage_errors(bad: str) -> None:
    with pytest.raises(UsageError, match="KEY=VALUE"):
        parse_env([bad])
    assert parse_env(["A=", "B=1"]) == ("A=", "B=1")


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("", User(0, 0, (), "/root")),
        ("app", User(1000, 1001, (29, 2000), "/home/app")),
        ("app:extra", User(1000, 2000, (29,), "/home/app")),
        ("app:5", User(1000, 5, (29, 2000), "/home/app")),
        ("1000", User(1000, 1001, (29, 2000), "/home/app")),
        ("1000:0", User(1000, 0, (29, 2000), "/home/app")),
        ("4242", User(4242, 0, (), "/")),
        ("4242:appgroup", User(4242, 1001, (), "/")),
        ("nohome", User(1002, 1002, (), "/")),
    ],
)
def test_users_resolve_as_docker_does(user: str, expected: User) -> None:
    assert resolve_user(user, PASSWD, GROUP) == expected


def test_numeric_users_need_no_files_and_names_do() -> None:
    assert resolve_user("7:8", None, None) == User(7, 8, (), "/")
    assert not needs_lookup("7:8") and not needs_lookup("")
    assert needs_lookup("app") and needs_lookup("7:staff")
    with pytest.raises(UsageError, match=r"'ghost' is not in the image's /etc/passwd"):
        resolve_user("ghost", PASSWD, GROUP)
    with pytest.raises(UsageError, match=r"it has no /etc/passwd"):
        resolve_user("app", None, None)
    with pytest.raises(UsageError, match=r"group 'nogroup' is not in the image's /etc/group"):
        resolve_user("app:nogroup", PASSWD, GROUP)
    with pytest.raises(UsageError, match=r"'broken' is not"):
        resolve_user("broken", PASSWD, GROUP)


def test_the_spec_confines_the_container() -> None:
    spec = build_spec(
        _config(),
        RunSettings(("--x",), ("B=2",), Limits(memory_bytes=256 << 20, pids=64)),
        User(1000, 1001, (2000,), "/home/app"),
        cgroups_path="/ns/c1",
    )
    process = spec["process"]
    assert process["args"] == ["/entry", "--x"]
    assert process["env"] == ["PATH=/opt/bin", "A=1", "B=2", "HOME=/home/app"]
    assert process["cwd"] == "/srv"
    assert process["user"] == {"uid": 1000, "gid": 1001, "additionalGids": [2000]}
    assert process["noNewPrivileges"] is True and process["terminal"] is False
    caps = process["capabilities"]
    assert set(caps) == {"bounding", "effective", "permitted"}
    assert all(caps[k] == list(DEFAULT_CAPABILITIES) for k in caps)
    assert "CAP_SYS_ADMIN" not in DEFAULT_CAPABILITIES and "CAP_NET_ADMIN" not in DEFAULT_CAPABILITIES
    linux = spec["linux"]
    assert [n["type"] for n in linux["namespaces"]] == ["pid", "ipc", "uts", "mount", "network"]
    assert all("path" not in n for n in linux["namespaces"]), "a namespace of its own, never the host's"
    assert linux["resources"]["memory"] == {"limit": 256 << 20, "swap": 256 << 20}
    assert linux["resources"]["pids"] == {"limit": 64}
    assert linux["resources"]["devices"] == [{"allow": False, "access": "rwm"}]
    assert linux["cgroupsPath"] == "/ns/c1"
    assert "/proc/kcore" in linux["maskedPaths"] and "/proc/sys" in linux["readonlyPaths"]
    # Kernel file systems and tmpfs only: no bind mount of anything of the host.
    mounts = {m["destination"]: m for m in spec["mounts"]}
    assert set(mounts) == {"/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/run"}
    assert all(m["type"] != "bind" and "bind" not in m["options"] for m in spec["mounts"])
    assert "ro" in mounts["/sys"]["options"]
    assert spec["root"] == {"path": "rootfs", "readonly": False}
    assert "privileged" not in str(spec).lower()


def test_the_spec_defaults() -> None:
    spec = build_spec(ImageConfig(cmd=("/bin/true",)), RunSettings(), User(), cgroups_path="/n/c")
    assert spec["process"]["cwd"] == "/"
    assert spec["process"]["user"] == {"uid": 0, "gid": 0}
    assert spec["linux"]["resources"]["memory"]["limit"] == 1 << 30
    assert spec["linux"]["resources"]["pids"]["limit"] == 1024
