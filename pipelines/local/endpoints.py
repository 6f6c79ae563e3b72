"""Local SageMaker hosting control plane: models, endpoint configs, endpoints, inference components.

The gate's SageMaker tasks call this instead of AWS. It keeps AWS's shapes and semantics where
the gate depends on them: names are unique, an endpoint goes Creating → InService | Failed,
an update keeps the old config serving until the new one is ready and rolls back (InService on
the old config, with a FailureReason) when it cannot be, and every record persists under
`endpoints/state.json` in the state folder so it survives restarts. Every call is a
read-modify-write under the file's lock (threads and processes: the gate, `provision` and the
gateway may touch it at once), and every write is atomic.
"""

from __future__ import annotations

import tarfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from pipelines.local import rollout
from pipelines.local.s3 import fetch
from pipelines.local.serving_metrics import version_counts
from pipelines.s3_errors import is_missing
from pipelines.state import Project, StateHome
from pipelines.statefiles import StateFileError, locked, read_json, write_json

KINDS = (
    "models",
    "endpoint_configs",
    "endpoints",
    "inference_components",
    "scalable_targets",
    "scaling_policies",
    "alarms",
)


class SageMakerError(Exception):
    """An error AWS would return: `code` is the API error code (ValidationException, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class EndpointManager:
    def __init__(self, home: StateHome, project: Project) -> None:
        self.home = home
        self.project = project
        self.path = home.endpoint_state

    # -- persistence -------------------------------------------------------------------------
    def _load(self) -> dict[str, dict[str, Any]]:
        if not self.path.is_file():
            return {kind: {} for kind in KINDS}
        state = read_json(self.path)
        if not isinstance(state, dict) or not all(isinstance(state.get(kind, {}), dict) for kind in KINDS):
            raise StateFileError(f"{self.path}: not an endpoint state file")
        return {kind: state.get(kind, {}) for kind in KINDS}

    def _save(self, state: dict[str, dict[str, Any]]) -> None:
        write_json(self.path, state)

    def _arn(self, kind: str, name: str) -> str:
        resource = {"models": "model", "endpoint_configs": "endpoint-config", "endpoints": "endpoint"}.get(
            kind, "inference-component"
        )
        return f"arn:aws:sagemaker:{self.project.region}:{self.project.account}:{resource}/{name.lower()}"

    # -- API ---------------------------------------------------------------------------------
    def call(self, action: str, parameters: dict[str, Any]) -> dict[str, Any]:
        """Dispatch a SageMaker API action by its Step Functions name (createModel, ...)."""
        snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in action).lstrip("_")
        method = getattr(self, snake, None)
        if method is None or snake.startswith("_") or snake == "call":
            raise SageMakerError("UnknownOperationException", f"local SageMaker does not implement {action}")
        with locked(self.path):
            return method(**parameters)

    def _create(self, kind: str, name: str, record: dict[str, Any], label: str) -> dict[str, Any]:
        state = self._load()
        if name in state[kind]:
            raise SageMakerError(
                "ValidationException", f'Cannot create already existing {label} "{self._arn(kind, name)}".'
            )
        state[kind][name] = {**record, "CreationTime": _now(), "Arn": self._arn(kind, name)}
        self._save(state)
        return state[kind][name]

    def _get(self, state: dict[str, dict[str, Any]], kind: str, name: str, label: str) -> dict[str, Any]:
        if name not in state[kind]:
            raise SageMakerError("ValidationException", f'Could not find {label} "{self._arn(kind, name)}".')
        return state[kind][name]

    def create_model(self, ModelName: str, PrimaryContainer: dict[str, Any], ExecutionRoleArn: str, **_: Any) -> dict:
        self._create(
            "models", ModelName, {"PrimaryContainer": PrimaryContainer, "ExecutionRoleArn": ExecutionRoleArn}, "model"
        )
        return {"ModelArn": self._arn("models", ModelName)}

    def create_endpoint_config(self, EndpointConfigName: str, ProductionVariants: list[dict], **extra: Any) -> dict:
        state = self._load()
        for variant in ProductionVariants:
            if "ModelName" in variant:
                self._get(state, "models", variant["ModelName"], "model")
        record = {"ProductionVariants": ProductionVariants, **extra}
        self._create("endpoint_configs", EndpointConfigName, record, "endpoint configuration")
        return {"EndpointConfigArn": self._arn("endpoint_configs", EndpointConfigName)}

    def create_endpoint(self, EndpointName: str, EndpointConfigName: str, **_: Any) -> dict:
        self._get(self._load(), "endpoint_configs", EndpointConfigName, "endpoint configuration")
        record = {"EndpointConfigName": None, "PendingConfigName": EndpointConfigName, "EndpointStatus": "Creating"}
        self._create("endpoints", EndpointName, record, "endpoint")
        return {"EndpointArn": self._arn("endpoints", EndpointName)}

    def update_endpoint(self, EndpointName: str, EndpointConfigName: str, **_: Any) -> dict:
        state = self._load()
        endpoint = self._get(state, "endpoints", EndpointName, "endpoint")
        self._get(state, "endpoint_configs", EndpointConfigName, "endpoint configuration")
        if endpoint["EndpointStatus"] not in ("InService", "Failed"):
            raise SageMakerError(
                "ValidationException",
                f'Cannot update in-progress endpoint "{endpoint["Arn"]}" (status {endpoint["EndpointStatus"]}).',
            )
        endpoint.update(PendingConfigName=EndpointConfigName, EndpointStatus="Updating", FailureReason=None)
        endpoint["LastModifiedTime"] = _now()
        self._save(state)
        return {"EndpointArn": endpoint["Arn"]}

    def describe_endpoint(self, EndpointName: str, **_: Any) -> dict:
        state = self._load()
        endpoint = self._get(state, "endpoints", EndpointName, "endpoint")
        if endpoint.get("PendingConfigName"):
            self._settle(state, endpoint)
            self._save(state)
        return {
            "EndpointName": EndpointName,
            "EndpointArn": endpoint["Arn"],
            "EndpointConfigName": endpoint["EndpointConfigName"] or endpoint.get("PendingConfigName"),
            "EndpointStatus": endpoint["EndpointStatus"],
            "CreationTime": endpoint["CreationTime"],
            "LastModifiedTime": endpoint.get("LastModifiedTime", endpoint["CreationTime"]),
            **({"FailureReason": endpoint["FailureReason"]} if endpoint.get("FailureReason") else {}),
        }

    def delete_endpoint(self, EndpointName: str, **_: Any) -> dict:
        state = self._load()
        self._get(state, "endpoints", EndpointName, "endpoint")
        del state["endpoints"][EndpointName]
        for name, component in list(state["inference_components"].items()):
            if component["EndpointName"] == EndpointName:
                del state["inference_components"][name]
        self._save(state)
        return {}

    def create_inference_component(
        self, InferenceComponentName: str, EndpointName: str, VariantName: str, Specification: dict, **extra: Any
    ) -> dict:
        state = self._load()
        self._get(state, "endpoints", EndpointName, "endpoint")
        self._get(state, "models", Specification["ModelName"], "model")
        record = {
            "EndpointName": EndpointName,
            "VariantName": VariantName,
            "Specification": None,
            "PendingSpecification": Specification,
            "InferenceComponentStatus": "Creating",
            **extra,
        }
        self._create("inference_components", InferenceComponentName, record, "inference component")
        return {"InferenceComponentArn": self._arn("inference_components", InferenceComponentName)}

    def update_inference_component(
        self, InferenceComponentName: str, Specification: dict, DeploymentConfig: dict | None = None, **extra: Any
    ) -> dict:
        """With a DeploymentConfig, a serving component changes model as a rolling update (`rollout`)."""
        state = self._load()
        component = self._get(state, "inference_components", InferenceComponentName, "inference component")
        self._get(state, "models", Specification["ModelName"], "model")
        if (component.get("Rollout") or {}).get("Status") == "InProgress":
            raise SageMakerError(
                "ValidationException", f"Inference component {InferenceComponentName} is being updated; retry later."
            )
        serving = (component.get("Specification") or {}).get("ModelName")
        component.update(PendingSpecification=Specification, InferenceComponentStatus="Updating", FailureReason=None)
        component.pop("Rollout", None)
        problem = self._model_problem(state, Specification["ModelName"])
        if DeploymentConfig and serving and serving != Specification["ModelName"] and problem is None:
            counts = version_counts(self.home, Specification["ModelName"])
            try:
                component["Rollout"] = rollout.start(serving, Specification["ModelName"], DeploymentConfig, counts,
                                                     time.time())  # fmt: skip
            except ValueError as error:
                raise SageMakerError("ValidationException", str(error)) from None
        component.update(extra)
        self._save(state)
        return {"InferenceComponentArn": component["Arn"]}

    def describe_inference_component(self, InferenceComponentName: str, **_: Any) -> dict:
        state = self._load()
        component = self._get(state, "inference_components", InferenceComponentName, "inference component")
        pending = component.get("PendingSpecification")
        if pending and (component.get("Rollout") or {}).get("Status") == "InProgress":
            self._advance_rollout(state, component)
            pending = component.get("PendingSpecification")
        elif pending:
            reason = self._model_problem(state, pending["ModelName"])
            if reason is None:
                component.update(Specification=pending, InferenceComponentStatus="InService")
            else:
                component["InferenceComponentStatus"] = "InService" if component["Specification"] else "Failed"
                component["FailureReason"] = reason
            component["PendingSpecification"] = None
            self._save(state)
        return {
            "InferenceComponentName": InferenceComponentName,
            "InferenceComponentArn": component["Arn"],
            "EndpointName": component["EndpointName"],
            "VariantName": component["VariantName"],
            "Specification": component["Specification"] or pending,
            "InferenceComponentStatus": component["InferenceComponentStatus"],
            **({"FailureReason": component["FailureReason"]} if component.get("FailureReason") else {}),
            **({"Rollout": _rollout_view(component["Rollout"])} if component.get("Rollout") else {}),  # local only
        }

    def _advance_rollout(self, state: dict[str, dict[str, Any]], component: dict[str, Any]) -> None:
        """One evaluation of a rolling update: alarms on the new version's traffic, then the next batch."""
        update = component["Rollout"]
        status = rollout.advance(update, state["alarms"], version_counts(self.home, update["To"]), time.time())
        if status == "Completed":
            component.update(Specification=component["PendingSpecification"], InferenceComponentStatus="InService")
            component["PendingSpecification"] = None
        elif status == "RolledBack":
            component.update(InferenceComponentStatus="InService", FailureReason=update["Reason"])
            component["PendingSpecification"] = None
        self._save(state)

    # -- scaling (Application Auto Scaling and CloudWatch calls of the realtime branch) --------
    def register_scalable_target(self, ResourceId: str, MinCapacity: int, MaxCapacity: int, **extra: Any) -> dict:
        state = self._load()
        state["scalable_targets"][ResourceId] = {"MinCapacity": MinCapacity, "MaxCapacity": MaxCapacity, **extra}
        self._save(state)
        arn = (
            f"arn:aws:application-autoscaling:{self.project.region}:{self.project.account}:scalable-target/{ResourceId}"
        )
        return {"ScalableTargetARN": arn}

    def put_scaling_policy(self, PolicyName: str, ResourceId: str, **extra: Any) -> dict:
        state = self._load()
        if ResourceId not in state["scalable_targets"]:
            raise SageMakerError("ObjectNotFoundException", f"No scalable target registered for {ResourceId}")
        arn = (
            f"arn:aws:autoscaling:{self.project.region}:{self.project.account}:scalingPolicy:"
            f"{ResourceId}:policyName/{PolicyName}"
        )
        state["scaling_policies"][PolicyName] = {"ResourceId": ResourceId, "PolicyARN": arn, **extra}
        self._save(state)
        return {"PolicyARN": arn, "Alarms": []}

    def put_metric_alarm(self, AlarmName: str, **extra: Any) -> dict:
        state = self._load()
        state["alarms"][AlarmName] = extra
        self._save(state)
        return {}

    # -- readiness ---------------------------------------------------------------------------
    def _settle(self, state: dict[str, dict[str, Any]], endpoint: dict[str, Any]) -> None:
        """Bring a Creating/Updating endpoint to its outcome: the new config, or the old one back."""
        config = state["endpoint_configs"][endpoint["PendingConfigName"]]
        reason = next(
            (
                problem
                for variant in config["ProductionVariants"]
                if "ModelName" in variant
                for problem in [self._model_problem(state, variant["ModelName"])]
                if problem
            ),
            None,
        )
        if reason is None:
            endpoint.update(EndpointConfigName=endpoint["PendingConfigName"], EndpointStatus="InService")
        else:
            endpoint["FailureReason"] = reason
            endpoint["EndpointStatus"] = "InService" if endpoint["EndpointConfigName"] else "Failed"
        endpoint["PendingConfigName"] = None
        endpoint["LastModifiedTime"] = _now()

    def _model_problem(self, state: dict[str, dict[str, Any]], model_name: str) -> str | None:
        """Why this model cannot serve, or None: the artifact must exist and hold a model."""
        container = state["models"][model_name]["PrimaryContainer"]
        url = container.get("ModelDataUrl")
        if not url:
            return f"model {model_name}: local endpoints need PrimaryContainer.ModelDataUrl (packages resolve on AWS)"
        try:
            path = self.model_archive(model_name, url)
        except ClientError as error:
            if is_missing(error):
                return f"model {model_name}: model data {url} does not exist"
            return f"model {model_name}: model data {url} cannot be read: {error.response['Error']['Code']}"
        except ValueError as error:
            return f"model {model_name}: {error}"
        try:
            with tarfile.open(path) as archive:
                names = set(archive.getnames())
        except (OSError, tarfile.TarError) as error:
            return f"model {model_name}: model data {url} is not a readable model.tar.gz: {error}"
        if not names & {"model.joblib", "./model.joblib"}:
            return f"model {model_name}: model data {url} holds no model.joblib"
        return None

    def model_archive(self, model_name: str, url: str | None = None) -> Path:
        """The model's model.tar.gz on this machine, fetched once from the local S3 (a SageMaker
        Model's data never changes: a new deployment is a new model)."""
        path = self.home.serving / "models" / model_name / "model.tar.gz"
        if not path.is_file():
            url = url or self.snapshot()["models"][model_name]["PrimaryContainer"]["ModelDataUrl"]
            fetch(self.home, url, path, self.project.region)
        return path

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """The whole state as last written (atomic writes: no lock needed to read a consistent copy)."""
        return self._load()


def _rollout_view(update: dict[str, Any]) -> dict[str, Any]:
    """A rollout as `endpoints show` and the gate's history show it (batches: share, start, alarm state)."""
    batches = [{key: batch[key] for key in ("Share", "StartedAt", "Alarms")} for batch in update["Batches"]]
    return {key: update[key] for key in ("From", "To", "Status", "Reason") if update.get(key)} | {"Batches": batches}
