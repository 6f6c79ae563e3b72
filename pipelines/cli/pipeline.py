"""`sagegate run | runs | models | pipeline definition`: the training pipeline and its registry."""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import re
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    AddParser,
    add_common,
    model_config,
    project,
    report_skipped,
)
from pipelines.cli.gate import print_verdict
from pipelines.config import INVALID_CONFIG_EXIT, ConfigError, ModelConfig, check_estimator, read_config
from pipelines.state import Project, StateHome

if TYPE_CHECKING:  # the work modules import the SageMaker SDK: loaded by the commands that need them
    from pipelines.local_gate import LocalGate
    from pipelines.local_run import Progress, RunRecord


# moto and the Step Functions SDK; the registry's MLflow client and its SQL stores (the gate's first step);
# what the Lambda handlers import (powertools, whose Tracer imports the X-Ray SDK even when disabled)
GATE_MODULES = (
    "pipelines.local_gate", "mlflow", "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store", "sqlalchemy.dialects.sqlite", "aws_lambda_powertools",
    "aws_lambda_powertools.utilities.parser", "aws_xray_sdk.core",
)  # fmt: skip


def import_all(modules: tuple[str, ...]) -> None:
    """Import `modules`, then freeze every object made so far (the collector never scans them again)
    and turn the collector back on: `run_command` turns it off while the SDK, moto and MLflow import.
    Its full collections kept rescanning their fresh objects: 1.7 s of one run's control plane."""
    try:
        for module in modules:
            importlib.import_module(module)
    finally:
        gc.freeze()
        gc.enable()


class GateWarmUp:
    """The gate, imported and prepared (`LocalGate.prepare`) on a thread of its own from the moment the
    run's last job (`step`, the register job) starts, beside it. Before that, its ~1.2 s of CPU competes
    with what the jobs need: the run's uploads and preprocessing want both cores, and the job server's
    successor imports MLflow and the ONNX converter for the register job at a lower priority, on what
    the jobs leave. Begun with training, the imports took that core on the bundled example, the successor
    was not ready in time and the register job imported MLflow itself (register 4.1-5.2 s, now 1.2-1.5 s
    in most runs). `gate`: the prepared gate, or None if preparing failed (the gate then prepares as it
    enters, and reports why)."""

    def __init__(self, step: str, progress: Progress | None, project: Project, home: StateHome) -> None:
        self.step, self.shown = step, progress
        self.project, self.home = project, home
        self.gate: LocalGate | None = None
        self.thread = threading.Thread(target=self._warm_up, name="gate-warm-up", daemon=True)

    def _warm_up(self) -> None:
        import_all(GATE_MODULES)
        from pipelines.local_gate import LocalGate

        gate = LocalGate(self.project, self.home)
        try:
            self.gate = gate.prepare()
        except Exception:
            gate.close()

    def progress(self, step: str, status: str, seconds: float | None) -> None:
        """The run's progress callback: passes every step on, starts the imports with the register job."""
        if status == "Executing" and step == self.step:
            self.start()
        if self.shown:
            self.shown(step, status, seconds)

    def start(self) -> None:
        if self.thread.ident is None:
            self.thread.start()

    def join(self) -> LocalGate | None:
        """Once the gate is due: its modules are in (imported now if the register job never started);
        the prepared gate."""
        self.start()
        self.thread.join()
        return self.gate

    def close(self) -> None:
        """Once the run is over: a gate prepared and not used stops (its moto server)."""
        if self.thread.ident is not None:
            self.thread.join()
        if self.gate is not None:
            self.gate.close()


def register(add: AddParser) -> None:
    run = add("run", help="run the training pipeline (locally, then the gate; or on SageMaker)")
    add_common(run)
    run.add_argument(
        "--platform", choices=("local", "sagemaker"), help="where the pipeline runs (default: training.platform)"
    )
    run.add_argument("--no-wait", action="store_true", help="sagemaker: print the execution ARN and return")
    run.add_argument("--json", action="store_true", help="print the run record as JSON")
    run.add_argument("--attempt", type=attempt_id, help=argparse.SUPPRESS)  # set by StartPipelineExecution
    run.set_defaults(handler=run_command)

    runs = add("runs", help="list past local runs")
    runs.add_argument("--json", action="store_true")
    runs.set_defaults(handler=runs_command)

    models = add("models", help="list registered model versions with their metrics")
    models.add_argument("--json", action="store_true")
    models.set_defaults(handler=models_command)

    mlflow = add("mlflow", help="MLflow on the state folder's store")
    mlflow_commands = mlflow.add_subparsers(dest="mlflow_command", required=True)
    ui = mlflow_commands.add_parser("ui", help="the MLflow UI on this state folder's tracking store and registry")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(handler=mlflow_ui_command)

    pipeline = add("pipeline", help="pipeline definition commands")
    pipeline_commands = pipeline.add_subparsers(dest="pipeline_command", required=True)
    definition = pipeline_commands.add_parser("definition", help="print the pipeline definition JSON (offline)")
    add_common(definition)
    definition.add_argument("--local", action="store_true", help="the local-mode variant (no Model Registry step)")
    definition.add_argument(
        "--kind",
        choices=("training", "inference", "monitoring"),
        default="training",
        help="which pipeline: training (default), the daily batch inference, or drift monitoring",
    )
    definition.set_defaults(handler=definition_command)


def attempt_id(text: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{12}", text):
        raise argparse.ArgumentTypeError(f"{text!r}: twelve lowercase hex digits")
    return text


def run_command(args: argparse.Namespace) -> int:
    overrides = [*args.set, *([f"training.platform={args.platform}"] if args.platform else [])]
    config = read_config(args.config, overrides)
    names = project(args)
    home = StateHome.from_env()
    if config.training.platform == "sagemaker":
        check_estimator(config, args.config)
        return remote_run_command(args, config, names, home)
    if not args.json:
        print(f"sagegate run: {config.name} ({config.task}) — pipeline {names.pipeline_name(config.name)}, local mode")
    from pipelines.local import forkserver
    from pipelines.local.s3 import started_early
    from pipelines.registry import PreparedStore

    # before the heavy imports: the MLflow store, the local S3 and the job server start meanwhile
    store = PreparedStore(home.ensure())
    with started_early(home, names), forkserver.running(home.runs):
        gc.disable()  # until the gate's modules are in (import_all), or the run ends before that
        warm: GateWarmUp | None = None
        try:
            from pipelines.local_run import RunError, run_local

            gc.freeze()
            # the config's scikit-learn part (0.7 s of import here), checked by the job server once it has the
            # estimator's module, while the run builds and uploads its definition; no step starts before it
            estimator = config.model.class_.rpartition(".")[0]
            check = forkserver.ModuleRun("pipelines.config", ["--", str(args.config), *overrides], after=estimator)

            def checked() -> None:
                code, output = check.result()
                if code:
                    raise (ConfigError if code == INVALID_CONFIG_EXIT else RunError)(output.strip())

            from pipelines.definition import MLFLOW_STEP

            os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
            warm = GateWarmUp(MLFLOW_STEP, None if args.json else print_progress, names, home)
            record = run_local(
                config, names, home, progress=warm.progress, store=store, attempt=args.attempt, checked=checked
            )
            if not args.json:
                print_run(record, config, home)
            execution = None
            if record.status == "Succeeded" and record.registered_version:
                prepared = warm.join()
                from pipelines.local_gate import run_gate

                execution = run_gate(config, names, home, record.registered_version, prepared=prepared)
                if not args.json:
                    print_verdict(execution)
        finally:
            if warm is not None:
                warm.close()
            gc.enable()
    if args.json:
        brief = None
        if execution:
            brief = {k: v for k, v in execution.to_json().items() if k not in ("events", "definition", "input")}
        print(json.dumps({**record.to_json(), "deployment": brief}, indent=2))
    return EXIT_OK if execution and execution.status == "SUCCEEDED" else EXIT_FAILED


def remote_run_command(args: argparse.Namespace, config: ModelConfig, names: Project, home: StateHome) -> int:
    """On SageMaker the gate runs there too (the registration rule starts it): this follows the pipeline."""
    from pipelines.remote_run import run_remote

    pipeline = names.pipeline_name(config.name)
    if not args.json:
        print(f"sagegate run: {config.name} ({config.task}) — pipeline {pipeline} on SageMaker ({names.region})")
    record = run_remote(config, names, home, wait=not args.no_wait, progress=None if args.json else print_progress)
    if args.json:
        print(json.dumps(record.to_json(), indent=2))
    elif args.no_wait:
        print(f"started {record.execution_arn}")
        print(f"  follow: aws sagemaker describe-pipeline-execution --pipeline-execution-arn {record.execution_arn}")
    else:
        print(f"\nResult: {record.status} in {record.duration_seconds:.1f}s (execution {record.execution_arn})")
        if record.failure_reason:
            print(f"Reason: {record.failure_reason}")
    if args.no_wait:
        return EXIT_OK
    return EXIT_OK if record.status == "Succeeded" else EXIT_FAILED


def print_progress(step: str, status: str, seconds: float | None) -> None:
    if status == "Trial":  # `step` is the tuner's line: "trial 3/12 Completed: validation:auc=0.99; best ..."
        print(f"      · {step}", flush=True)
    elif status == "Executing":
        print(f"  … {step}", flush=True)
    else:
        mark = "✓" if status == "Succeeded" else "✗"
        print(f"  {mark} {step:<22} {status:<10} {seconds or 0:6.1f}s", flush=True)


def gate_description(config: ModelConfig) -> str:
    parts = []
    for metric, threshold in config.quality_gate.metrics.items():
        if threshold.min is not None:
            parts.append(f"{metric} >= {threshold.min}")
        if threshold.max is not None:
            parts.append(f"{metric} <= {threshold.max}")
    return ", ".join(parts)


def print_run(record: RunRecord, config: ModelConfig, home: StateHome) -> None:
    print(f"\nResult: {record.status} in {record.duration_seconds:.1f}s (run {record.run_id})")
    if record.metrics:
        print("Metrics: " + ", ".join(f"{k}={v:.4f}" for k, v in record.metrics.items()))
    if record.gate:
        print(f"Quality gate: {record.gate} ({gate_description(config)})")
    if record.registered_version:
        print(
            f"Registered: {record.registered_model} version {record.registered_version} in MLflow "
            f"({home.mlflow_tracking_uri})"
        )
    if record.tuning:
        tuning = record.tuning
        best = next(t for t in tuning["trials"] if t["training_job"] == tuning["best_training_job"])
        counts = ", ".join(
            f"{sum(t['status'] == status for t in tuning['trials'])} {status.lower()}"
            for status in ("Completed", "Stopped", "Failed")
        )
        print(
            f"Tuning: {len(tuning['trials'])} trials ({counts}); best {tuning['objective']}={best['objective']:.6g} "
            f"(trial {best['trial']}, {best['hyperparameters']}); `sagegate tuning show {record.run_id}`"
        )
    if record.failure_reason:
        print(f"Reason: {record.failure_reason}")
        print("Nothing was registered.")
    for name, location in record.artifacts.items():
        print(f"  {name:<13} {location}")


def mlflow_ui_command(args: argparse.Namespace) -> int:
    """`mlflow ui` on the store every run writes to, 127.0.0.1 only (replaces this process)."""
    home = StateHome.from_env().ensure()
    mlflow = str(Path(sys.executable).parent / "mlflow")
    command = [mlflow, "ui", "--backend-store-uri", home.mlflow_tracking_uri, "--default-artifact-root",
               str(home.mlflow_artifacts), "--host", "127.0.0.1", "--port", str(args.port)]  # fmt: skip
    print(f"MLflow UI on {home.mlflow_tracking_uri}: http://127.0.0.1:{args.port}", flush=True)
    os.execv(mlflow, command)
    return EXIT_OK  # not reached


def runs_command(args: argparse.Namespace) -> int:
    from pipelines.local_run import list_records

    records, problems = list_records(StateHome.from_env())
    report_skipped(problems)
    if args.json:
        print(json.dumps([r.to_json() for r in records], indent=2))
        return EXIT_OK
    if not records:
        print("no runs yet: try `sagegate run models/breast-cancer.yaml`")
        return EXIT_OK
    print(f"{'RUN':<14} {'STARTED':<26} {'MODEL':<16} {'WHERE':<10} {'STATUS':<10} {'GATE':<7} {'VERSION':<8} REASON")
    for r in records:
        reason = (r.failure_reason or "")[:70]
        print(
            f"{r.run_id:<14} {r.started_at:<26} {r.model:<16} {r.platform:<10} {r.status:<10} {r.gate or '-':<7} "
            f"{r.registered_version or '-':<8} {reason}"
        )
    return EXIT_OK


def models_command(args: argparse.Namespace) -> int:
    from pipelines.registry import list_versions

    versions, problems = list_versions(StateHome.from_env())
    report_skipped(problems)
    if args.json:
        print(json.dumps(versions, indent=2))
        return EXIT_OK
    if not versions:
        print("no registered models yet")
        return EXIT_OK
    print(f"{'MODEL':<36} {'VERSION':<8} {'ALIASES':<10} {'CREATED':<20} {'RUN':<14} {'RUNTIME':<8} METRICS")
    for v in versions:
        metrics = ", ".join(f"{k}={float(x):.4f}" for k, x in sorted(v["metrics"].items()))
        aliases = ",".join(v["aliases"]) or "-"
        print(
            f"{v['name']:<36} {v['version']:<8} {aliases:<10} {v['created']:<20} {v['execution_id']:<14} "
            f"{v['runtime']:<8} {metrics}"
        )
        if v["runtime"] != "onnx":
            print(f"{'':<36} {'':<8} runtime: {v['runtime_reason']}")
    return EXIT_OK


def definition_command(args: argparse.Namespace) -> int:
    from pipelines.definition import definition_json

    print(definition_json(model_config(args), project(args), local=args.local, kind=args.kind))
    return EXIT_OK
