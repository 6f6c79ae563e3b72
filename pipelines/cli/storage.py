"""`sagegate s3 ls|cp|serve`: browse the local S3 as `aws s3` would (or keep it up with `serve` and use
the AWS CLI with `--endpoint-url`)."""

from __future__ import annotations

import argparse
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from botocore.exceptions import ClientError

from pipelines.cli.common import EXIT_OK, AddParser
from pipelines.local.s3 import LocalS3, split
from pipelines.state import StateHome


def register(add: AddParser) -> None:
    group = add("s3", help="list and copy objects of the local S3").add_subparsers(dest="s3_command", required=True)
    listing = group.add_parser("ls", help="buckets, or the objects under s3://bucket[/prefix]")
    listing.add_argument("location", nargs="?", default="")
    listing.add_argument("--recursive", action="store_true", help="every key under the prefix, not one level")
    listing.set_defaults(handler=ls_command)
    copy = group.add_parser("cp", help="copy between a local file and s3://bucket/key (either way)")
    copy.add_argument("source")
    copy.add_argument("destination")
    copy.set_defaults(handler=cp_command)
    serve = group.add_parser("serve", help="keep the local S3 up until interrupted; prints its URL")
    serve.set_defaults(handler=serve_command)


@contextmanager
def _naming(location: str) -> Iterator[None]:
    """The S3 error as one line naming the location (`aws s3` style), not a botocore traceback."""
    try:
        yield
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        what = {"NoSuchBucket": "no such bucket", "NoSuchKey": "no such key", "404": "no such key"}.get(code, "")
        raise ValueError(f"{location}: {what or error}") from None


def ls_command(args: argparse.Namespace) -> int:
    with LocalS3(StateHome.from_env().ensure()) as s3, _naming(args.location):
        client = s3.client
        if not args.location:
            for bucket in client.list_buckets()["Buckets"]:
                print(f"{bucket['CreationDate']:%Y-%m-%d %H:%M:%S} {bucket['Name']}")
            return EXIT_OK
        bucket, prefix = split(args.location)
        options = {} if args.recursive else {"Delimiter": "/"}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, **options):
            for common in page.get("CommonPrefixes", []):
                print(f"{'PRE':>30} {common['Prefix']}")
            for item in page.get("Contents", []):
                print(f"{item['LastModified']:%Y-%m-%d %H:%M:%S} {item['Size']:>10} {item['Key']}")
    return EXIT_OK


def cp_command(args: argparse.Namespace) -> int:
    remote = args.source if args.source.startswith("s3://") else args.destination
    with LocalS3(StateHome.from_env().ensure()) as s3, _naming(remote):
        if args.source.startswith("s3://") and not args.destination.startswith("s3://"):
            target = Path(args.destination)
            if target.is_dir():
                target = target / split(args.source)[1].rsplit("/", 1)[-1]
            s3.download(args.source, target)
            print(f"download: {args.source} to {target}")
        elif args.destination.startswith("s3://") and not args.source.startswith("s3://"):
            if not Path(args.source).is_file():
                raise ValueError(f"{args.source}: no such file")
            destination = args.destination
            if destination.endswith("/"):
                destination += Path(args.source).name
            s3.upload(Path(args.source), destination)
            print(f"upload: {args.source} to {destination}")
        else:
            raise ValueError("one of SOURCE and DESTINATION must be s3://bucket/key, the other a local path")
    return EXIT_OK


def serve_command(args: argparse.Namespace) -> int:
    """Hold a lease in the foreground: other commands share the server, and it stops after the last."""
    with LocalS3(StateHome.from_env().ensure()) as s3:
        print(f"local S3 at {s3.endpoint_url} (aws --endpoint-url {s3.endpoint_url} s3 ls); Ctrl-C to stop", flush=True)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    return EXIT_OK
