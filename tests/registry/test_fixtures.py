from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest

from tests.fixtures.registry import ROOT_DIR, start_registry


def test_start_failure_shows_log_tail(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(pytest.fail.Exception, match="address already in use"):
            start_registry(tmp_path, listen=f"127.0.0.1:{port}", timeout=10)


def test_command_line_server_for_scripts(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fixtures.registry", "registry", "--dir", str(tmp_path)],
        cwd=ROOT_DIR,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT_DIR)},
    )
    try:
        assert process.stdout is not None
        info = json.loads(process.stdout.readline())
        with urllib.request.urlopen(f"{info['url']}/v2/", timeout=5) as response:
            assert response.status == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        with pytest.raises(ProcessLookupError):
            os.kill(info["pid"], 0)  # the registry itself is gone too
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
