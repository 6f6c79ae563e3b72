"""`sagegate` command line: run the pipeline locally, inspect runs and models, serve, print definitions.

One module per command group (`pipeline`, `gate`, `serving`, `predict`, `storage`, `tuning`,
`monitoring`, `schedule`, `console`); each registers its
parsers and prints results, and the work lives in the modules they call.
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

from pipelines.cli import console, gate, monitoring, pipeline, predict, schedule, serving, storage, tuning
from pipelines.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_common, model_config, project
from pipelines.config import ConfigError
from pipelines.local import botocore_patch
from pipelines.logs import quiet_sdk_logs

__all__ = ["build_parser", "get_pipeline_definition", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sagegate", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for group in (pipeline, gate, serving, predict, storage, tuning, monitoring, schedule, console):
        group.register(commands.add_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    quiet_sdk_logs()
    botocore_patch.install()  # before any session: the SDK makes some as it is imported
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, RuntimeError, OSError) as error:  # RunError, GateError, BatchError, ProvisionError...
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if argv is None:  # the `sagegate` program, about to exit: the interpreter's last garbage
            gc.freeze()  # collections over SDK, moto and MLflow objects took ~2 s of `sagegate run`


def get_pipeline_definition(argv: list[str] | None = None) -> int:
    """SageMaker project-template entry point: `get-pipeline-definition -f definition.json MODEL_YAML`."""
    parser = argparse.ArgumentParser(prog="get-pipeline-definition", description=get_pipeline_definition.__doc__)
    add_common(parser)
    parser.add_argument("-f", "--file-name", help="write the JSON here instead of stdout")
    quiet_sdk_logs()
    args = parser.parse_args(argv)
    from pipelines.definition import definition_json

    try:
        text = definition_json(model_config(args), project(args))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.file_name:
        Path(args.file_name).write_text(text + "\n")
    else:
        print(text)
    return EXIT_OK
