"""Data capture for the local endpoints: SageMaker's capture format, written off the request path.

The gateway offers each sampled request and response to `CaptureWriter.offer`, which never blocks:
the queue is bounded and a record that does not fit is dropped and counted, so capture can neither
slow nor fail a request. A writer thread appends the records as JSON lines to spool files laid out
as their S3 keys will be (`{bucket}/{prefix}/{endpoint}/{variant}/yyyy/mm/dd/hh/MM-SS-mmm-{uuid}.jsonl`),
seals a file after `FILE_SECONDS` (or when its hour ends), and delivers sealed files to the local S3.
Lines reach the spool within a fraction of a second, so a gateway killed outright loses at most the
records still queued; the next gateway (or `sagegate monitor run`) seals and delivers what it left.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import queue
import random
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from pipelines.local.s3 import s3_client, split
from pipelines.local.s3_server import S3Server
from pipelines.state import StateHome
from pipelines.statefiles import StateFileError, read_json, write_json

FILE_SECONDS = float(os.environ.get("SAGEGATE_CAPTURE_FILE_SECONDS", "1"))  # how long one spool file stays open
BATCH_SECONDS = 0.05  # the writer wakes this often and writes everything queued meanwhile
QUEUE_LIMIT = 10_000  # records waiting for the writer; beyond this, capture drops and counts
# what the gate's CaptureContentTypeHeader says; a content type it does not list is captured as BASE64
TEXT_TYPES = {"CSV": ("text/csv",), "JSON": ("application/json",)}
PART = ".part"

log = logging.getLogger(__name__)


def spool_folder(home: StateHome) -> Path:
    return home.serving / "capture"


def status_path(home: StateHome) -> Path:
    return spool_folder(home) / "status.json"


@dataclass(frozen=True)
class CaptureTarget:
    """Where one endpoint's variant captures to, how much of its traffic and what of it (DataCaptureConfig)."""

    destination: str  # s3://bucket/prefix
    sampling_percentage: int
    modes: tuple[str, ...] = ("Input", "Output")
    text_types: tuple[tuple[str, tuple[str, ...]], ...] = tuple(TEXT_TYPES.items())  # encoding → content types


def capture_target(endpoint_config: dict[str, Any]) -> CaptureTarget | None:
    """The endpoint config's DataCaptureConfig, when it captures requests and responses."""
    config = endpoint_config.get("DataCaptureConfig") or {}
    modes = tuple(sorted({str(option.get("CaptureMode")) for option in config.get("CaptureOptions", [])}))
    if not config.get("EnableCapture", True) or not config.get("DestinationS3Uri") or not modes:
        return None
    header = config.get("CaptureContentTypeHeader") or {}
    text_types = (
        ("CSV", tuple(header.get("CsvContentTypes", ()))),
        ("JSON", tuple(header.get("JsonContentTypes", ()))),
    )
    return CaptureTarget(
        config["DestinationS3Uri"].rstrip("/"), int(config.get("InitialSamplingPercentage", 100)), modes, text_types
    )


def _payload(body: bytes, content_type: str, mode: str, text_types: Any) -> dict[str, str]:
    media = content_type.split(";")[0].strip().lower()
    encoding = next((name for name, types in text_types if media in types), "BASE64")
    try:
        data = body.decode("utf-8") if encoding != "BASE64" else base64.b64encode(body).decode()
    except UnicodeDecodeError:
        encoding, data = "BASE64", base64.b64encode(body).decode()
    return {"observedContentType": content_type, "mode": mode, "data": data, "encoding": encoding}


def capture_line(
    request: bytes,
    request_type: str,
    response: bytes,
    response_type: str,
    when: datetime,
    event_id: str | None = None,
    inference_id: str | None = None,
    target: CaptureTarget | None = None,
) -> str:
    """One captured invocation in SageMaker's format (the key order and shape of AWS's files); `target`:
    which sides are captured and which content types as text (default: both; CSV and JSON)."""
    modes = target.modes if target else ("Input", "Output")
    text_types = target.text_types if target else tuple(TEXT_TYPES.items())
    metadata = {"eventId": event_id or str(uuid.uuid4()), "inferenceTime": when.strftime("%Y-%m-%dT%H:%M:%SZ")}
    if inference_id:
        metadata["inferenceId"] = inference_id
    record = {
        "captureData": {
            **({"endpointInput": _payload(request, request_type, "INPUT", text_types)} if "Input" in modes else {}),
            **(
                {"endpointOutput": _payload(response, response_type, "OUTPUT", text_types)} if "Output" in modes else {}
            ),
        },
        "eventMetadata": metadata,
        "eventVersion": "0",
    }
    return json.dumps(record, separators=(",", ":")) + "\n"


def capture_key(destination: str, endpoint: str, variant: str, when: datetime) -> str:
    """The S3 key folder of a capture file written at `when`: AWS's `{endpoint}/{variant}/yyyy/mm/dd/hh`."""
    bucket, prefix = split(destination)
    return f"{bucket}/{prefix}/{endpoint}/{variant}/{when:%Y/%m/%d/%H}"


@dataclass(frozen=True)
class _Invocation:
    endpoint: str
    variant: str
    target: CaptureTarget
    when: datetime
    request: tuple[bytes, str]
    response: tuple[bytes, str]
    inference_id: str | None


@dataclass
class _OpenFile:
    path: Path
    stream: IO[str]
    opened: float
    hour: str


class CaptureWriter:
    """The gateway's capture: `offer` from request threads, one writer thread, delivery to the local S3."""

    def __init__(self, home: StateHome, region: str) -> None:
        self.home = home
        self.region = region
        self.spool = spool_folder(home)
        self.spool.mkdir(parents=True, exist_ok=True)
        self.queue: queue.Queue[_Invocation] = queue.Queue(QUEUE_LIMIT)
        self.lock = threading.Lock()
        self.counts: dict[str, dict[str, int]] = {}
        self.counts = {name: dict(counts) for name, counts in capture_status(home).items()}  # survive restarts
        self.pending: dict[str, int] = {}  # per endpoint: records offered by this writer, not yet in S3
        self._own: set[Path] = set()  # sealed files of this writer (what it delivers counts against `pending`)
        self._written: dict[str, Any] = {}
        self._written_at = 0.0
        self._files: dict[tuple[str, str], _OpenFile] = {}
        self._server: S3Server | None = None
        self._client: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="data-capture")
        self._thread.start()

    def _count(self, endpoint: str, field: str, amount: int = 1) -> None:
        with self.lock:
            counts = self.counts.setdefault(endpoint, {"captured": 0, "dropped": 0, "delivered": 0})
            counts[field] = counts.get(field, 0) + amount

    def offer(
        self,
        endpoint: str,
        variant: str,
        target: CaptureTarget,
        request: tuple[bytes, str],
        response: tuple[bytes, str],
        inference_id: str | None = None,
    ) -> None:
        """Sample one invocation (body and content type each way) at the variant's percentage and queue it;
        never blocks, never raises. The line is formatted by the writer thread, off the request path."""
        if random.uniform(0, 100) >= target.sampling_percentage:
            return
        invocation = _Invocation(endpoint, variant, target, datetime.now(UTC), request, response, inference_id)
        try:
            self.queue.put_nowait(invocation)
        except queue.Full:
            self._count(endpoint, "dropped")
        else:
            self._count(endpoint, "captured")
            with self.lock:
                self.pending[endpoint] = self.pending.get(endpoint, 0) + 1

    def _run(self) -> None:
        pending = recover(self.spool) > 0 or any(self.spool.rglob("*.jsonl"))
        retry_at = 0.0
        while True:
            stopping = self._stop.wait(BATCH_SECONDS)  # a batch per interval: few wake-ups, one flush each
            try:
                while True:
                    self._write(self.queue.get_nowait())
            except queue.Empty:
                pass
            except Exception:  # keep capturing whatever one record hit
                log.exception("data capture failed to write a record")
            for stream in self._files.values():
                stream.stream.flush()
            pending = self._seal(float("inf") if stopping else time.monotonic() - FILE_SECONDS) or pending
            if pending and (stopping or time.monotonic() >= retry_at):
                pending = not self._deliver()
                retry_at = time.monotonic() + (5 if pending else 0)
            self._write_status(force=stopping)
            if stopping and self.queue.empty():
                return

    def _write(self, item: _Invocation) -> None:
        endpoint, variant, when = item.endpoint, item.variant, item.when
        line = capture_line(*item.request, *item.response, when, inference_id=item.inference_id, target=item.target)
        folder = capture_key(item.target.destination, endpoint, variant, when)
        current = self._files.get((endpoint, variant))
        if current is not None and current.hour != folder:
            self._close((endpoint, variant))
            current = None
        if current is None:
            name = f"{when:%M-%S}-{when.microsecond // 1000:03d}-{uuid.uuid4()}.jsonl"
            path = self.spool / folder / (name + PART)
            path.parent.mkdir(parents=True, exist_ok=True)
            current = self._files[(endpoint, variant)] = _OpenFile(path, path.open("a"), time.monotonic(), folder)
        current.stream.write(line)

    def _close(self, key: tuple[str, str]) -> None:
        opened = self._files.pop(key)
        opened.stream.close()
        sealed = opened.path.with_name(opened.path.name.removesuffix(PART))
        os.replace(opened.path, sealed)
        self._own.add(sealed)

    def _seal(self, opened_before: float) -> bool:
        """Close the files opened before `opened_before`; whether any was."""
        due = [key for key, opened in self._files.items() if opened.opened <= opened_before]
        for key in due:
            self._close(key)
        return bool(due)

    def _deliver(self) -> bool:
        """Deliver the sealed files; False when the local S3 could not take them (they stay in the spool)."""
        try:
            if self._client is None:
                self._server = S3Server(self.home.s3_store)
                self._client = s3_client(self._server.acquire(), self.region)
            for path, endpoint, records in deliver(self.spool, self._client):
                self._count(endpoint, "delivered", records)
                if path in self._own:  # not a file a killed gateway left
                    self._own.discard(path)
                    with self.lock:
                        self.pending[endpoint] -= records
        except Exception as error:
            log.warning("data capture delivery failed, will retry: %s", error)
            return False
        return True

    def _write_status(self, force: bool = False) -> None:
        """The counters for `sagegate endpoints show` and `monitor run`: when they change (at most four
        times a second), and once a second regardless (the heartbeat `await_delivery` trusts)."""
        now = time.monotonic()
        with self.lock:
            state = {"endpoints": {name: dict(values) for name, values in self.counts.items()},
                     "pending": dict(self.pending)}  # fmt: skip
        changed = state != self._written
        if not force and now - self._written_at < (0.25 if changed else 1.0):
            return
        write_json(status_path(self.home), {"updated": time.time(), **state})
        self._written, self._written_at = state, now

    def close(self) -> None:
        """Write and deliver everything queued, then drop the S3 lease."""
        self._stop.set()
        self._thread.join(timeout=30)
        if self._server is not None:
            self._server.release()


def recover(spool: Path) -> int:
    """Seal the spool files a killed gateway left open, cut after their last whole line. Only while no
    gateway runs: a live one still appends to its open file."""
    sealed = 0
    for path in spool.rglob(f"*.jsonl{PART}"):
        try:
            data = path.read_bytes()
            os.truncate(path, data.rfind(b"\n") + 1)  # in place: a kill meanwhile leaves whole lines either way
            os.replace(path, path.with_name(path.name.removesuffix(PART)))
        except FileNotFoundError:
            continue  # another command sealed it first
        sealed += 1
    return sealed


def deliver(spool: Path, client: Any) -> list[tuple[Path, str, int]]:
    """Upload sealed spool files to their S3 keys, remove them and their emptied folders (so the spool's
    size follows what is undelivered, not history); (file, endpoint, records) of each file delivered."""
    delivered = []
    for path in sorted(spool.rglob("*.jsonl")):
        bucket, key = path.relative_to(spool).as_posix().split("/", 1)
        try:
            records = path.read_bytes().count(b"\n")
            client.upload_file(str(path), bucket, key)
            path.unlink()
        except FileNotFoundError:
            continue  # another process delivered it first
        delivered.append((path, key.split("/")[-7], records))  # …/{endpoint}/{variant}/yyyy/mm/dd/hh/file
        folder = path.parent
        while folder != spool:
            try:
                folder.rmdir()
            except OSError:
                break  # not empty (or already gone)
            folder = folder.parent
    return delivered


def capture_status(home: StateHome) -> dict[str, dict[str, int]]:
    """Records captured, dropped and delivered to S3 per endpoint, as the gateway last wrote them."""
    return read_status(home).get("endpoints", {})


def read_status(home: StateHome) -> dict[str, Any]:
    path = status_path(home)
    try:
        document = read_json(path) if path.is_file() else {}
    except StateFileError:
        return {}
    return document if isinstance(document, dict) else {}


def await_delivery(home: StateHome, endpoint: str, seconds: float) -> int:
    """Wait until the gateway's capture writer has delivered every record of `endpoint` it took before
    now (it seals a file a second after opening it), so a command sees every request made before it;
    the records still pending at the deadline (0 normally). No live writer (no heartbeat within two
    seconds): nothing is pending."""
    started = time.time()
    deadline = time.monotonic() + seconds
    while True:
        status = read_status(home)
        updated = float(status.get("updated", 0))
        if started - updated > 2.0:
            return 0
        pending = int(status.get("pending", {}).get(endpoint, 0))
        if (updated >= started and pending <= 0) or time.monotonic() > deadline:
            return max(pending, 0)
        time.sleep(0.05)
