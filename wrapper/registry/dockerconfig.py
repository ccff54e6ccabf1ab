"""The one writer of a docker config for a program soci-wrapper runs (``soci push``, soci-snapshotter-grpc).

Such programs read registry credentials from ``$DOCKER_CONFIG/config.json`` (``auths``: base64
``user:password``). The credentials go there, never on a command line: in a private temporary directory
(0700; the file 0600, created exclusively) that is removed when the program is done with it. With a CA of the
user's (``--ca-file``), ``SSL_CERT_FILE`` names a bundle of the system's CAs and that one: a Go program reads
its trusted CAs from it, and it replaces the system bundle.

    with PrivateDockerConfig("reg.example:5000", "user", password, parent=run_dir) as env:
        run(..., env={**os.environ, **env})
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# Docker Hub's credentials are looked up under the name of its old index too.
_DOCKER_HUB = ("docker.io", "registry-1.docker.io", "index.docker.io")
_DOCKER_HUB_INDEX = "https://index.docker.io/v1/"


class PrivateDockerConfig:
    """A ``DOCKER_CONFIG`` directory for one registry's credentials (none: anonymous), and ``SSL_CERT_FILE``
    for ``ca_file``. ``open()`` writes it and returns the variables to set; ``close()`` removes it."""

    def __init__(
        self,
        host: str,
        username: str | None = None,
        password: str | None = None,
        *,
        ca_file: str | None = None,
        parent: Path | None = None,
        prefix: str = "soci-auth-",
    ) -> None:
        self.host = host
        self.username = username
        self._password = password
        self.ca_file = ca_file
        self.parent = parent
        self.prefix = prefix
        self.path: Path | None = None

    def __repr__(self) -> str:
        return f"PrivateDockerConfig({self.host!r}, {self.username!r}, path={self.path})"

    def open(self) -> dict[str, str]:
        """Write the directory; the environment variables that point a program at it."""
        if self.parent is not None:
            self.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=self.prefix, dir=self.parent))
        try:
            os.chmod(self.path, 0o700)
            auths: dict[str, dict[str, str]] = {}
            if self.username is not None:
                token = base64.b64encode(f"{self.username}:{self._password or ''}".encode()).decode()
                keys = [self.host, *([_DOCKER_HUB_INDEX] if self.host in _DOCKER_HUB else [])]
                auths = {key: {"auth": token} for key in keys}
            fd = os.open(self.path / "config.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump({"auths": auths}, fh)
            env = {"DOCKER_CONFIG": str(self.path)}
            if self.ca_file:
                bundle = self.path / "ca-bundle.pem"
                with open(bundle, "wb") as out:
                    if SYSTEM_CA_BUNDLE.exists():
                        out.write(SYSTEM_CA_BUNDLE.read_bytes().rstrip(b"\n") + b"\n")
                    out.write(Path(self.ca_file).read_bytes())
                env["SSL_CERT_FILE"] = str(bundle)
        except BaseException:
            self.close()
            raise
        return env

    def close(self) -> None:
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = None

    def __enter__(self) -> dict[str, str]:
        return self.open()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
