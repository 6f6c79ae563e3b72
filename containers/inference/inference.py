"""Inference handlers for SageMaker's scikit-learn serving container (model_fn contract).

Registered with the model package so the Model Registry entry is deployable as is.
Imports nothing from `pipelines/`.
"""

from __future__ import annotations

import os
from typing import Any

import joblib


def model_fn(model_dir: str) -> Any:
    return joblib.load(os.path.join(model_dir, "model.joblib"))
