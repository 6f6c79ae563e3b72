"""The runtime image in pipeline definitions: every job runs on the project's one image.

The image (`containers/Dockerfile`) holds the packages of `containers/requirements.lock`, which
are the local environment's: what trains a model is what serves it, locally and on AWS. Every
step names it by its content-addressed tag, which `scripts/deploy.sh` builds with CodeBuild before
it upserts the definition; a literal, not a parameter, because the SDK resolves a training
image parameter to its default anyway, and an image is part of what a definition is.
"""

from __future__ import annotations

from typing import Any

from sagemaker.processing import ScriptProcessor
from sagemaker.session import Session

from pipelines.containers import image_tag
from pipelines.state import Project


def runtime_image_uri(project: Project) -> str:
    return project.image_uri(image_tag())


def script_processor(project: Project, session: Session, model: str, job: str, instance_type: Any) -> ScriptProcessor:
    """A processing job running one of `containers/{job}/` scripts with python3 on the runtime image."""
    return ScriptProcessor(
        image_uri=runtime_image_uri(project),
        command=["python3"],
        role=project.training_role_arn,
        instance_type=instance_type,
        instance_count=1,
        base_job_name=project.job_name_prefix(model, job),
        sagemaker_session=session,
    )
