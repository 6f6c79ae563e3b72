"""The local S3 (SeaweedFS `weed mini`, pipelines/local/s3_server.py) vs a moto server, in one sweep.

For each: time until it answers, put and get of a 34 MB object, and the server's resident memory when
idle; for SeaweedFS also the start-up on a store that already holds --fill MB (start-up must not
grow with history). The figures behind the README's choice of SeaweedFS.

Usage: python benchmarks/storage.py [--fill 300]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import boto3
import psutil

from pipelines.local.s3 import ensure_bucket, s3_client
from pipelines.local.s3_server import S3Server

OBJECT = os.urandom(34 * 2**20)


def put_get(client: object) -> tuple[float, float]:
    ensure_bucket(client, "bench")
    started = time.perf_counter()
    client.put_object(Bucket="bench", Key="object", Body=OBJECT)  # type: ignore[attr-defined]
    put = time.perf_counter() - started
    started = time.perf_counter()
    body = client.get_object(Bucket="bench", Key="object")["Body"].read()  # type: ignore[attr-defined]
    get = time.perf_counter() - started
    assert body == OBJECT
    return put, get


def seaweed(store: Path) -> dict[str, float]:
    server = S3Server(store)
    started = time.perf_counter()
    endpoint = server.acquire()
    ready = time.perf_counter() - started
    try:
        put, get = put_get(s3_client(endpoint, "us-east-1"))
        pid = int(str(server.running()["process"]).partition(":")[0])  # type: ignore[index]
        idle = psutil.Process(pid).memory_info().rss / 2**20
    finally:
        server.release()
    return {"ready": ready, "put": put, "get": get, "idle_mb": idle}


def moto() -> dict[str, float]:
    before = psutil.Process().memory_info().rss / 2**20
    started = time.perf_counter()
    from moto.server import ThreadedMotoServer  # timed: a command would import it to start one

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    client = boto3.client(
        "s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )  # fmt: skip
    client.list_buckets()
    ready = time.perf_counter() - started
    try:
        put, get = put_get(client)
        held = psutil.Process().memory_info().rss / 2**20 - before  # moto and its objects, in the caller's memory
    finally:
        server.stop()
    return {"ready": ready, "put": put, "get": get, "idle_mb": held}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fill", type=int, default=300, help="MB already in the store for the second start-up")
    args = parser.parse_args()
    store = Path(tempfile.mkdtemp(prefix="sagegate-storage-bench-")) / "s3store"
    fresh = seaweed(store)
    server = S3Server(store)
    client = s3_client(server.acquire(), "us-east-1")
    for index in range(args.fill // 34):
        client.put_object(Bucket="bench", Key=f"history/{index}", Body=OBJECT)
    server.release()
    filled = seaweed(store)
    baseline = moto()
    for name, figures in (("seaweedfs (fresh store)", fresh), (f"seaweedfs ({args.fill} MB stored)", filled),
                          ("moto server (baseline)", baseline)):  # fmt: skip
        print(f"{name:<28} ready {figures['ready']:.2f}s  put 34 MB {figures['put']:.2f}s  "
              f"get {figures['get']:.2f}s  memory {figures['idle_mb']:.0f} MB")  # fmt: skip
    print(
        f"start-up with history / fresh: {filled['ready'] / fresh['ready']:.2f}x; "
        f"put vs moto {fresh['put'] / baseline['put']:.2f}x, get vs moto {fresh['get'] / baseline['get']:.2f}x"
    )


if __name__ == "__main__":
    main()
