"""Metadata lives in setup.cfg; this maps the non-Python folders into the package as `pipelines.assets`."""

from setuptools import find_packages, setup

ASSETS = ("containers", "lambdas", "cloudformation", "models")

setup(
    packages=[*find_packages(include=["pipelines", "pipelines.*"]), *(f"pipelines.assets.{f}" for f in ASSETS)],
    package_dir={f"pipelines.assets.{folder}": folder for folder in ASSETS},  # wheels: pipelines/assets/...
    package_data={
        **{f"pipelines.assets.{folder}": ["**/*"] for folder in ASSETS},
        "pipelines.console": ["templates/*.html", "static/*"],
    },
    exclude_package_data={"": ["__pycache__/*", "*.pyc"]},
)
