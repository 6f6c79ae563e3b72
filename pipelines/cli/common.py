"""What every command group shares: exit codes, the common options, and how skipped records are named."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from pipelines.config import ModelConfig, find_model_config, load_config
from pipelines.state import ENVIRONMENTS, Project

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

AddParser = Callable[..., argparse.ArgumentParser]  # a subparsers object's `add_parser`


def add_common(parser: argparse.ArgumentParser, *, config: bool = True) -> None:
    """`--env/--project/--region`, and for commands on one model YAML: the path and `--set`."""
    if config:
        parser.add_argument("config", help="model YAML, e.g. models/breast-cancer.yaml")
        add_overrides(parser)
    add_names(parser)


def add_names(parser: argparse.ArgumentParser, default: object = None) -> None:
    """`--env/--project/--region`. A sub-command of a command that has them passes
    `argparse.SUPPRESS`, so they may come after it without resetting the parent's values."""
    parser.add_argument(
        "--env",
        choices=ENVIRONMENTS,
        default=default,
        help="environment (default $SAGEGATE_ENVIRONMENT or development)",
    )
    parser.add_argument(
        "--project", default=default, help="resource name prefix (default $SAGEGATE_PROJECT or sagegate)"
    )
    parser.add_argument("--region", default=default, help="AWS region (default $AWS_DEFAULT_REGION or us-east-1)")


def add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a config field, e.g. model.hyperparameters.max_depth=8 (repeatable)",
    )


def add_model_choice(parser: argparse.ArgumentParser) -> None:
    """`--model NAME` (found in ./models or the bundled examples), or `--config PATH`."""
    parser.add_argument("--model", required=True, help="model name (the `name` in its YAML)")
    parser.add_argument("--config", help="model YAML (default: the one in ./models named --model)")
    add_overrides(parser)


def project(args: argparse.Namespace) -> Project:
    base = Project.from_env()
    return Project(
        prefix=args.project or base.prefix,
        environment=args.env or base.environment,
        region=args.region or base.region,
        account=base.account,
        primary_region=base.primary_region,
    )


def model_config(args: argparse.Namespace) -> ModelConfig:
    return load_config(args.config, args.set)


def chosen_model_config(args: argparse.Namespace) -> ModelConfig:
    return load_config(args.config, args.set) if args.config else find_model_config(args.model, args.set)


def report_skipped(problems: list[str]) -> None:
    """Listings show every readable record and name each one they had to skip."""
    for problem in problems:
        print(f"warning: skipped {problem}", file=sys.stderr)
