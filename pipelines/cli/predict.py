"""`sagegate predict`: batch predictions over CSV files (the daily inference job, run locally)."""

from __future__ import annotations

import argparse

from pipelines.cli.common import EXIT_OK, AddParser, add_common, project
from pipelines.state import StateHome


def register(add: AddParser) -> None:
    batch = add("predict", help="batch predictions over CSV files (the daily inference job)")
    batch.add_argument("--model", required=True, help="NAME, NAME@alias (default @champion) or NAME@version")
    batch.add_argument("--input", required=True, help="CSV file or folder; s3://bucket/prefix reads the local S3")
    batch.add_argument("--output", required=True, help="output folder; s3://bucket/prefix writes the local S3")
    batch.add_argument("--chunk-rows", type=int, default=10_000, help="rows per chunk (memory stays flat)")
    add_common(batch, config=False)
    batch.set_defaults(handler=predict_command)


def predict_command(args: argparse.Namespace) -> int:
    from pipelines.batch import predict

    result = predict(
        StateHome.from_env(), project(args), args.model, args.input, args.output, chunk_rows=args.chunk_rows
    )
    print(result["log"])
    print(f"model {result['model']} version {result['version']} → {result['output']}")
    return EXIT_OK
