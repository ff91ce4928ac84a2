"""Debian's mosquitto on a free local port, for the fleet's tests and benchmarks/fleet.py."""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import time
from pathlib import Path

BINARY = shutil.which("mosquitto") or next(
    (p for p in ("/usr/sbin/mosquitto",) if Path(p).exists()), None)
MISSING = ("needs Debian's mosquitto (apt-get install mosquitto; .ci/run installs it)"
           if BINARY is None else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """One mosquitto on 127.0.0.1, anonymous, persistent (its sessions and queued messages
    survive :meth:`restart`, as a plant broker's do)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.conf = self.folder / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                             f"persistence true\npersistence_location {self.folder}/\n"
                             f"log_dest file {self.folder}/mosquitto.log\n"
                             # run as root, mosquitto would become user mosquitto, which
                             # cannot write its persistence file in our folder
                             f"user {getpass.getuser()}\n")
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen([BINARY, "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not start on port {self.port}: "
                           f"{(self.folder / 'mosquitto.log').read_text(errors='replace')}")

    def stop(self) -> None:
        """SIGTERM: mosquitto saves its sessions to its persistence file."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()
