"""Run directories: one per run, under the work directory's parent, owned (and swept) by the supervisor.

Before making its own, a run sweeps the parent: the run directories (``soci-wrapper-*``) whose owner process
is gone (killed with SIGKILL, and its watchdog too) are cleaned up, their leftover process groups killed and
their mounts undone first (``wrapper.system.cleanup.sweep``). A live run's directory is never touched.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

from wrapper.system import cleanup
from wrapper.system.supervisor import supervisor

log = logging.getLogger("wrapper.system.rundirs")


def sweep(parent: Path | None = None) -> list[Path]:
    """Clean up after the dead runs under ``parent`` (default: the system's temporary directory)."""
    cleaned = cleanup.sweep(Path(parent) if parent is not None else Path(tempfile.gettempdir()))
    for path in cleaned:
        log.info("cleaned up %s, left by a run that was killed", path)
    return cleaned


@contextlib.contextmanager
def run_directory(parent: Path | None = None, *, keep: bool = False) -> Iterator[Path]:
    """A fresh ``soci-wrapper-*`` directory in ``parent`` (which must exist), owned by this process: removed
    afterwards unless ``keep``, and cleaned up after by the watchdog or the next run if this one is killed."""
    sweep(parent)
    path = Path(tempfile.mkdtemp(prefix=cleanup.RUN_DIR_PREFIX, dir=parent))
    owner = supervisor()
    owner.own(path, keep=keep, run_dir=True)
    try:
        yield path
    finally:
        if keep:
            log.info("kept work directory %s", path)
        owner.release(path, remove=not keep)
