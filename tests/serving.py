"""The real `flythinker serve` in a subprocess, for the tests that talk to it over HTTP."""

from __future__ import annotations


def start_server(model, tmp_path, key: str, stdout, mode: str = "sequential", extra=(), start_s: float = 60):
    """`flythinker serve` on a free localhost port, once /health answers: (process, port)."""
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flythinker.cli",
            "serve",
            str(model),
            "--port",
            str(port),
            "--db",
            str(tmp_path / "p.db"),
            "--mode",
            mode,
            *extra,
        ],
        env={**os.environ, "FLYTHINKER_API_KEY": key, "OMP_NUM_THREADS": "1"},
        stdout=stdout,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + start_s
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc, port
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
