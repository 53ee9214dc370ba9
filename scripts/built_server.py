"""Starting the built rkms-server for the suite's Python checks: on an ephemeral loopback
port, its log read on so that it never blocks on a full pipe."""

import os
import re
import subprocess
import threading
import time


def start(binary, *args):
    """Starts `binary` with `args` and `--listen 127.0.0.1:0`; returns the process and its
    address (IP:PORT) once it listens, or (None, None) if it does not within 30 s."""
    server = subprocess.Popen(
        [binary, *args, "--listen", "127.0.0.1:0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RUST_LOG": "info"},
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        line = server.stderr.readline()
        if not line and server.poll() is not None:
            break
        found = re.search(r"rkms-server listening.*addr=(\S+)", line)
        if found:
            threading.Thread(target=server.stderr.read, daemon=True).start()
            return server, found.group(1)
    server.kill()
    server.wait()
    return None, None
