"""The drift-monitoring pipeline for AWS: one processing step running containers/monitor/monitor.py.

Model Monitor is closed to new customers, so the model stack schedules this ordinary pipeline
(EventBridge Scheduler, `monitoring.schedule`) instead of a monitoring schedule. Its job gets Model
Monitor's custom-container environment; the window ends at the schedule's fire time (`EndTime`,
from `<aws.scheduler.scheduled-time>`) and spans `WindowMinutes`. The baseline and the evaluation
are the champion's copies (the gate's promoter puts them beside the champion's artifact), so a new
champion is monitored against its own training data without touching the schedule. With
`retrain_on_drift` the job itself starts the training pipeline when a feature drifted.
"""

from __future__ import annotations

from sagemaker.processing import ProcessingInput, ProcessingOutput
from sagemaker.session import Session
from sagemaker.workflow.execution_variables import ExecutionVariables
from sagemaker.workflow.functions import Join
from sagemaker.workflow.parameters import ParameterInteger, ParameterString
from sagemaker.workflow.pipeline import Pipeline
from sagemaker.workflow.steps import ProcessingStep

from pipelines.config import ModelConfig
from pipelines.containers import container_code, content_digest
from pipelines.runtime_image import script_processor
from pipelines.sessions import code_prefix
from pipelines.state import Project

ROOT = "/opt/ml/processing"


def build_monitoring_pipeline(config: ModelConfig, project: Project, session: Session) -> Pipeline:
    if config.monitoring is None or not config.captures():
        raise ValueError(f"{config.name}: no monitoring with data capture in its YAML, so nothing to monitor")
    name, bucket = config.name, project.bucket
    endpoint = project.endpoint_name(name, config.deployment.type)
    end_time = ParameterString("EndTime", default_value="")  # empty: the job's start
    window = ParameterInteger("WindowMinutes", default_value=config.monitoring.window_minutes)
    instance = ParameterString("ProcessingInstanceType", default_value=config.training.processing_instance_type)
    processor = script_processor(project, session, name, "monitor", instance)
    processor.env = {
        "dataset_source": f"{project.capture_uri}/{endpoint}",
        "output_path": f"{ROOT}/resultdata",
        "end_time": end_time,
        "window_minutes": window.to_string(),
        "sagemaker_endpoint_name": endpoint,
        "baseline_statistics": f"{ROOT}/baseline/statistics.json",
        "baseline_constraints": f"{ROOT}/baseline/constraints.json",
        "feature_importance": f"{ROOT}/evaluation/evaluation.json",
        "publish_cloudwatch_metrics": "Enabled",
        "retrain_on_drift": "true" if config.monitoring.retrain_on_drift else "false",
        "retrain_pipeline_name": project.pipeline_name(name),
        "SAGEGATE_MONITOR_LIB": f"{ROOT}/input/lib",
    }
    # the statistics are the preprocess job's own code, shipped beside the monitor (content-addressed)
    source = container_code("preprocess", "preprocess.py")
    digest = content_digest({"preprocess.py": source})
    library = session.upload_data(str(source), bucket=bucket, key_prefix=f"{code_prefix(name)}/monitor-lib/{digest}")
    reports = Join(on="/", values=[project.monitoring_reports_uri(endpoint), ExecutionVariables.PIPELINE_EXECUTION_ID])
    step = ProcessingStep(
        name="MonitorDrift",
        step_args=processor.run(
            code=str(container_code("monitor", "monitor.py")),
            inputs=[
                ProcessingInput(source=project.champion_baseline_uri(name), destination=f"{ROOT}/baseline"),
                ProcessingInput(source=project.champion_evaluation_uri(name), destination=f"{ROOT}/evaluation"),
                ProcessingInput(source=library, destination=f"{ROOT}/input/lib", input_name="lib"),
            ],
            outputs=[
                ProcessingOutput(
                    output_name="report",
                    source=f"{ROOT}/resultdata",
                    destination=reports,
                )
            ],
        ),
    )
    return Pipeline(
        name=project.monitoring_pipeline_name(name),
        parameters=[end_time, window, instance],
        steps=[step],
        sagemaker_session=session,
    )
