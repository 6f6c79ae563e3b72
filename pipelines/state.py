"""Where local state lives and how AWS resources are named.

One folder (default `.sagegate/`, or `$SAGEGATE_HOME`) holds everything a local run
leaves behind, so it survives restarts and can be deleted in one go.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PROJECT = "sagegate"
DEFAULT_ENVIRONMENT = "development"
DEFAULT_REGION = "us-east-1"
DEFAULT_ACCOUNT = "123456789012"
ENVIRONMENTS = ("development", "staging", "production")


@dataclass(frozen=True)
class Project:
    """Naming of every AWS resource: `{project}-{env}-...`.

    An environment can be deployed to several regions (an endpoint near its users, training where
    the data is). Most names are regional and repeat as they are; S3 bucket and IAM role names are
    global, so outside the primary region they end in `-{region}` (`primary_region` None: this one).
    """

    prefix: str = DEFAULT_PROJECT
    environment: str = DEFAULT_ENVIRONMENT
    region: str = DEFAULT_REGION
    account: str = DEFAULT_ACCOUNT
    primary_region: str | None = None

    def __post_init__(self) -> None:
        if self.environment not in ENVIRONMENTS:
            raise ValueError(f"environment {self.environment!r}: expected one of {', '.join(ENVIRONMENTS)}")

    @classmethod
    def from_env(cls) -> Project:
        return cls(
            prefix=os.environ.get("SAGEGATE_PROJECT", DEFAULT_PROJECT),
            environment=os.environ.get("SAGEGATE_ENVIRONMENT", DEFAULT_ENVIRONMENT),
            region=os.environ.get("AWS_DEFAULT_REGION", DEFAULT_REGION),
            account=os.environ.get("SAGEGATE_ACCOUNT_ID", DEFAULT_ACCOUNT),
            primary_region=os.environ.get("SAGEGATE_PRIMARY_REGION") or None,
        )

    # Every `{project}-{env}-...` name is built here and nowhere else.
    def name(self, *parts: str) -> str:
        """`{project}-{env}-{part}-...`: the shape of every resource name."""
        return "-".join((self.prefix, self.environment, *parts))

    @property
    def global_suffix(self) -> str:
        """ "" in the primary region, "-{region}" elsewhere: for globally unique names only."""
        return "" if self.primary_region in (None, self.region) else f"-{self.region}"

    @property
    def bucket(self) -> str:
        return self.name("training") + self.global_suffix

    def role_name(self, role: str) -> str:
        return self.name(role) + self.global_suffix

    def pipeline_name(self, model: str) -> str:
        return self.name(model, "training")

    def monitoring_pipeline_name(self, model: str) -> str:
        return self.name(model, "monitoring")

    def inference_pipeline_name(self, model: str) -> str:
        return self.name(model, "inference")

    def registered_model(self, model: str) -> str:
        """The MLflow registered model, and the SageMaker model package group."""
        return self.name(model)

    model_package_group = registered_model

    def model_package_arn(self, group: str, version: str | int) -> str:
        """A registered version in the Model Registry (`group`: the registered model's name)."""
        return f"arn:aws:sagemaker:{self.region}:{self.account}:model-package/{group}/{version}"

    def endpoint_name(self, model: str, deployment_type: str) -> str:
        return self.name(model, deployment_type)

    def model_name(self, model: str, digest: str) -> str:
        """A SageMaker Model: new per deployment (the digest), so every deployment is blue/green."""
        return self.name(model, digest)

    def endpoint_config_name(self, model: str, digest: str) -> str:
        return self.name(model, "config", digest)

    def inference_component_name(self, model: str) -> str:
        return self.name(model, "component")

    def stack_name(self, *parts: str) -> str:
        return self.name(*parts)

    def gate_function_name(self, kind: str) -> str:
        return self.name("gate", kind)

    @property
    def state_machine_name(self) -> str:
        return self.name("deployment-gate")

    @property
    def mlflow_tracking_server_arn(self) -> str:
        return f"arn:aws:sagemaker:{self.region}:{self.account}:mlflow-tracking-server/{self.name('mlflow')}"

    def role_arn(self, role: str) -> str:
        return f"arn:aws:iam::{self.account}:role/{self.role_name(role)}"

    @property
    def training_role_arn(self) -> str:
        return self.role_arn("sagemaker-training")

    @property
    def inference_role_arn(self) -> str:
        return self.role_arn("sagemaker-inference")

    def job_name_prefix(self, model: str, job: str) -> str:
        """SageMaker job base names (`{project}-{model}-{job}`; the SDK appends a timestamp)."""
        return f"{self.prefix}-{model}-{job}"

    @staticmethod
    def champion_model_key(model: str) -> str:
        """Where the promoter publishes the champion's artifact for the daily batch pipeline."""
        return f"models/{model}/champion/model.tar.gz"

    def champion_artifact_uri(self, model: str) -> str:
        return f"s3://{self.bucket}/{self.champion_model_key(model)}"

    def evaluation_uri(self, model: str, execution_id: str) -> str:
        """The evaluation report of one pipeline execution (the evaluate step's output)."""
        return f"s3://{self.bucket}/evaluation/{model}/{execution_id}/evaluation.json"

    def champion_baseline_uri(self, model: str) -> str:
        """The champion's monitoring baseline (statistics.json, constraints.json), copied there by the gate."""
        return self.champion_artifact_uri(model).rsplit("/", 1)[0] + "/baseline"

    def champion_evaluation_uri(self, model: str) -> str:
        return self.champion_artifact_uri(model).rsplit("/", 1)[0] + "/evaluation.json"

    @property
    def capture_uri(self) -> str:
        """Where endpoints capture traffic: `{this}/{endpoint}/{variant}/yyyy/mm/dd/hh/*.jsonl`, as AWS lays it out."""
        return f"s3://{self.bucket}/monitoring/capture"

    def monitoring_reports_uri(self, endpoint: str) -> str:
        return f"s3://{self.bucket}/monitoring/reports/{endpoint}"

    @property
    def image_repository(self) -> str:
        """The ECR repository of the runtime image (every job and the model server run on it)."""
        return self.name("runtime")

    @property
    def image_build_project(self) -> str:
        """The CodeBuild project that builds the runtime image (cloudformation/images.yaml)."""
        return self.name("runtime-image")

    def image_uri(self, tag: str) -> str:
        return f"{self.account}.dkr.ecr.{self.region}.amazonaws.com/{self.image_repository}:{tag}"


@dataclass(frozen=True)
class StateHome:
    """The local state folder and its fixed layout."""

    root: Path

    @classmethod
    def from_env(cls) -> StateHome:
        return cls(Path(os.environ.get("SAGEGATE_HOME", ".sagegate")).resolve())

    @property
    def s3_store(self) -> Path:
        """The local S3 server's store and records (`pipelines.local.s3_server`)."""
        return self.root / "s3store"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow" / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlflow" / "artifacts"

    def mlflow_artifact_location(self, experiment: str) -> str:
        """Where an experiment's artifacts go: in the state folder (a client's default is ./mlruns)."""
        return (self.mlflow_artifacts / experiment).as_uri()

    @property
    def mlflow_tracking_uri(self) -> str:
        return f"sqlite:///{self.mlflow_db}"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def jobs(self) -> Path:
        """Scratch space for local job containers (the SDK's `container_root`)."""
        return self.root / "jobs"

    @property
    def executions(self) -> Path:
        """Gate execution records (`{name}.json`) and their Lambda logs (`logs/`)."""
        return self.root / "executions"

    @property
    def endpoint_state(self) -> Path:
        """The local hosting control plane's records (models, configs, endpoints, scaling)."""
        return self.root / "endpoints" / "state.json"

    @property
    def serving(self) -> Path:
        """The gateway's files: `gateway.json` (who serves), `metrics.json`, logs, `models/{name}`."""
        return self.root / "serving"

    def ensure(self) -> StateHome:
        for folder in (self.s3_store, self.mlflow_db.parent, self.mlflow_artifacts, self.runs, self.jobs):
            folder.mkdir(parents=True, exist_ok=True)
        return self
