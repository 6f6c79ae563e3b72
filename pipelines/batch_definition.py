"""The daily batch-inference pipeline for AWS: one processing step running containers/batch/batch.py.

Scheduled daily by the model stack. Its model input defaults to the champion's artifact, which
the gate's promoter copies to `models/{model}/champion/model.tar.gz` whenever it records a new
champion, so the schedule never needs to know version numbers.
"""

from __future__ import annotations

from sagemaker.processing import ProcessingInput, ProcessingOutput
from sagemaker.session import Session
from sagemaker.workflow.execution_variables import ExecutionVariables
from sagemaker.workflow.functions import Join
from sagemaker.workflow.parameters import ParameterString
from sagemaker.workflow.pipeline import Pipeline
from sagemaker.workflow.steps import ProcessingStep

from pipelines.config import ModelConfig
from pipelines.containers import container_code
from pipelines.runtime_image import script_processor
from pipelines.state import Project


def build_inference_pipeline(config: ModelConfig, project: Project, session: Session) -> Pipeline:
    bucket, name = project.bucket, config.name
    model_uri = ParameterString("ModelDataUri", default_value=project.champion_artifact_uri(name))
    input_uri = ParameterString("InputDataUri", default_value=f"s3://{bucket}/inference-data/{name}/")
    output_prefix = ParameterString("OutputPrefix", default_value=f"s3://{bucket}/predictions/{name}")
    instance = ParameterString("ProcessingInstanceType", default_value=config.training.processing_instance_type)
    processor = script_processor(project, session, name, "batch", instance)
    arguments = ["--probabilities"] if config.task == "classification" else []
    step = ProcessingStep(
        name="BatchPredict",
        step_args=processor.run(
            code=str(container_code("batch", "batch.py")),
            inputs=[
                ProcessingInput(source=model_uri, destination="/opt/ml/processing/model", input_name="model"),
                ProcessingInput(source=input_uri, destination="/opt/ml/processing/input", input_name="input"),
            ],
            outputs=[
                ProcessingOutput(
                    output_name="predictions",
                    source="/opt/ml/processing/output",
                    destination=Join(on="/", values=[output_prefix, ExecutionVariables.PIPELINE_EXECUTION_ID]),
                )
            ],
            arguments=arguments,
        ),
    )
    return Pipeline(
        name=project.inference_pipeline_name(config.name),
        parameters=[model_uri, input_uri, output_prefix, instance],
        steps=[step],
        sagemaker_session=session,
    )
