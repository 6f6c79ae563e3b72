"""scripts/deploy.sh and destroy.sh: prerequisites, dry runs (no AWS call), and what they would deploy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def make_fake_aws(folder: Path) -> Path:
    """An `aws` on PATH that records any call and fails: a dry run must never reach it."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "aws"
    script.write_text(f'#!/bin/sh\necho "$@" >> {folder}/calls\nexit 1\n')
    script.chmod(0o755)
    return folder


@pytest.fixture(scope="module")
def fake_aws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_aws(tmp_path_factory.mktemp("bin"))


def script(name: str, *args: str, fake_aws: Path, build: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PATH"] = f"{fake_aws}:/usr/bin:/bin"
    if build:
        env["SAGEGATE_BUILD_DIR"] = str(build)
    return subprocess.run([str(ROOT / "scripts" / name), *args], capture_output=True, text=True, env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def dry_run(fake_aws: Path, tmp_path_factory: pytest.TempPathFactory):
    build = tmp_path_factory.mktemp("build")
    result = script("deploy.sh", "staging", "--region", "eu-west-1", "--dry-run", fake_aws=fake_aws, build=build)
    return result, build / "deploy" / "staging"


def test_dry_run_prints_every_command_in_dependency_order_and_calls_nothing(dry_run, fake_aws: Path) -> None:
    result, _ = dry_run
    assert result.returncode == 0, result.stderr
    assert not (fake_aws / "calls").exists()
    deploys = [line for line in result.stdout.splitlines() if line.startswith("+ aws cloudformation deploy")]
    stacks = [line.split("--stack-name ")[1].split()[0] for line in deploys]
    assert stacks == [
        "sagegate-staging-training-bucket",
        "sagegate-staging-iam-roles",
        "sagegate-staging-images",
        "sagegate-staging-gate",
        "sagegate-staging-breast-cancer-tuned",  # models/*.yaml in name order
        "sagegate-staging-breast-cancer",
        "sagegate-staging-friedman1",
    ]
    assert all("--no-fail-on-empty-changeset" in line and "--region eu-west-1" in line for line in deploys)
    assert "CAPABILITY_NAMED_IAM" in deploys[1]
    # the runtime image: its build context uploaded, its stack, then a build only if ECR lacks the tag,
    # all before the gate and the pipelines that run on it
    from pipelines.containers import image_tag

    lines = result.stdout.splitlines()
    image_stack = next(i for i, line in enumerate(lines) if "--stack-name sagegate-staging-images" in line)
    build = next(i for i, line in enumerate(lines) if "aws codebuild start-build" in line)
    gate_stack = next(i for i, line in enumerate(lines) if "--stack-name sagegate-staging-gate" in line)
    assert image_stack < build < gate_stack
    assert f"ImageTag={image_tag()}" in lines[image_stack] and f"images/runtime-{image_tag()}.zip" in lines[image_stack]
    assert f"--repository-name sagegate-staging-runtime --image-ids imageTag={image_tag()}" in lines[build]
    assert "--project-name sagegate-staging-runtime-image" in lines[build]
    # the rendered parameters are printed
    assert "    Environment = staging" in result.stdout
    assert '"quality_gate":{"accuracy":{"min":0.85},"f1":{"min":0.85}}' in result.stdout
    assert "dry run: nothing was called on AWS" in result.stdout


def test_deployed_pipeline_and_state_machine_are_exactly_the_exported_definitions(dry_run) -> None:
    _, out = dry_run
    exported = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "pipeline", "definition", "models/breast-cancer.yaml",
         "--env", "staging", "--region", "eu-west-1"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    ).stdout  # fmt: skip
    assert json.loads((out / "pipelines" / "breast-cancer.json").read_text()) == json.loads(exported)
    inference = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "pipeline", "definition", "models/breast-cancer.yaml",
         "--env", "staging", "--region", "eu-west-1", "--kind", "inference"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    ).stdout  # fmt: skip
    assert json.loads((out / "pipelines" / "breast-cancer-inference.json").read_text()) == json.loads(inference)
    gate = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "gate", "definition"], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads((out / "gate.asl.json").read_text()) == json.loads(gate)
    commands = (out / "commands.sh").read_text()
    assert "gate/deployment-gate-" in commands and "DefinitionKey=gate/deployment-gate-" in commands


def test_a_second_dry_run_plans_the_same_keys(dry_run, fake_aws: Path, tmp_path: Path) -> None:
    _, out = dry_run
    again = script("deploy.sh", "staging", "--region", "eu-west-1", "--dry-run", fake_aws=fake_aws, build=tmp_path)
    assert again.returncode == 0
    first = (out / "commands.sh").read_text().replace(str(out), "OUT")
    second = (
        (tmp_path / "deploy" / "staging" / "commands.sh")
        .read_text()
        .replace(str(tmp_path / "deploy" / "staging"), "OUT")
    )
    assert first == second


def test_prerequisites_are_checked_with_clear_messages(fake_aws: Path, tmp_path: Path) -> None:
    no_aws = tmp_path / "empty-bin"
    no_aws.mkdir()
    missing = script("deploy.sh", "staging", fake_aws=no_aws)
    assert missing.returncode == 1 and "the AWS CLI is not installed" in missing.stderr
    failing = make_fake_aws(tmp_path / "failing-aws")
    no_credentials = script("deploy.sh", "staging", fake_aws=failing)
    assert no_credentials.returncode == 1 and "no usable AWS credentials" in no_credentials.stderr
    assert (failing / "calls").read_text().startswith("sts get-caller-identity")
    bad = script("deploy.sh", "qa", "--dry-run", fake_aws=fake_aws)
    assert bad.returncode == 1 and "unknown argument 'qa'" in bad.stderr


def test_destroy_keeps_retained_data_unless_asked(fake_aws: Path) -> None:
    kept = script("destroy.sh", "production", "--dry-run", fake_aws=fake_aws)
    assert kept.returncode == 0, kept.stderr
    assert "retained (DeletionPolicy Retain) with their data" in kept.stdout
    assert "s3 rm" not in kept.stdout and "s3 rb" not in kept.stdout
    deletes = [line.split("--stack-name ")[1].split()[0] for line in kept.stdout.splitlines() if "delete-stack" in line]
    assert deletes == [
        "sagegate-production-breast-cancer-tuned",
        "sagegate-production-breast-cancer",
        "sagegate-production-friedman1",
        "sagegate-production-gate",
        "sagegate-production-images",
        "sagegate-production-iam-roles",
        "sagegate-production-training-bucket",
    ]
    purged = script("destroy.sh", "production", "--delete-data", "--dry-run", fake_aws=fake_aws)
    assert "s3 rb s3://sagegate-production-training" in purged.stdout
    development = script("destroy.sh", "development", "--dry-run", fake_aws=fake_aws)
    assert "s3 rm s3://sagegate-development-training --recursive" in development.stdout
    assert not (fake_aws / "calls").exists()


def test_the_image_build_context_is_exactly_the_files_its_tag_hashes(dry_run) -> None:
    import zipfile

    from pipelines.containers import IMAGE_FILES, image_tag

    _, out = dry_run
    with zipfile.ZipFile(out / "images" / f"runtime-{image_tag()}.zip") as archive:
        assert sorted(archive.namelist()) == sorted(IMAGE_FILES)
        for name in IMAGE_FILES:
            assert archive.read(name) == (ROOT / "containers" / name).read_bytes()
        assert archive.getinfo("entrypoint.sh").external_attr >> 16 == 0o755


def test_every_object_a_deployed_definition_references_is_uploaded(dry_run) -> None:
    """The step code the SDK uploads while building a definition (under moto, offline) is in the plan:
    an execution on AWS finds every script and sourcedir.tar.gz its steps name."""
    import re

    _, out = dry_run
    commands = (out / "commands.sh").read_text()
    uploaded = set(re.findall(r"^upload \S+ (s3://\S+)$", commands, re.M))
    for definition in (out / "pipelines").glob("*.json"):
        text = json.loads(definition.read_text())
        referenced = set(re.findall(r"s3://sagegate-staging-training/training-code/[^\"\\]+", json.dumps(text)))
        assert referenced, definition.name
        assert referenced <= uploaded, (definition.name, referenced - uploaded)
        for uri in referenced:  # the bytes uploaded are the ones the definition was built with
            key = uri.removeprefix("s3://sagegate-staging-training/")
            assert (out / "code" / key).is_file()


def test_a_second_region_plans_regional_global_names(fake_aws: Path, tmp_path: Path) -> None:
    """Two regions of one environment: the primary keeps the plain names, the other suffixes the global
    ones (bucket, roles) everywhere they appear: stacks, definitions, destroy."""
    from pipelines.state import Project

    plans = {}
    for region in ("us-east-1", "ap-southeast-2"):
        build = tmp_path / region
        result = script(
            "deploy.sh", "staging", "--region", region, "--primary-region", "us-east-1", "--dry-run",
            fake_aws=fake_aws, build=build,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        plans[region] = (result.stdout, build / "deploy" / "staging")
    primary, sydney = (
        Project("sagegate", "staging", "us-east-1", primary_region="us-east-1"),
        Project("sagegate", "staging", "ap-southeast-2", primary_region="us-east-1"),
    )
    assert (primary.bucket, sydney.bucket) == ("sagegate-staging-training", "sagegate-staging-training-ap-southeast-2")
    assert sydney.training_role_arn.endswith(":role/sagegate-staging-sagemaker-training-ap-southeast-2")
    for region, project in (("us-east-1", primary), ("ap-southeast-2", sydney)):
        stdout, out = plans[region]
        deploys = [line for line in stdout.splitlines() if line.startswith("+ aws cloudformation deploy")]
        suffixed = [line for line in deploys if f"GlobalNameSuffix={project.global_suffix}" in line.split()]
        assert len(suffixed) == 4  # bucket, roles, images, gate: the templates that name global resources
        assert all(f"--region {region}" in line for line in deploys)
        commands = (out / "commands.sh").read_text()
        assert f"s3://{project.bucket}/" in commands
        definition = json.loads((out / "pipelines" / "friedman1.json").read_text())
        text = json.dumps(definition)
        assert project.training_role_arn in text and f"dkr.ecr.{region}.amazonaws.com" in text
        assert f"s3://{project.bucket}/" in text
    assert "sagegate-staging-training-ap-southeast-2" not in (plans["us-east-1"][1] / "commands.sh").read_text()
    destroyed = script(
        "destroy.sh", "development", "--region", "ap-southeast-2", "--primary-region", "us-east-1", "--dry-run",
        fake_aws=fake_aws,
    )  # fmt: skip
    assert "s3 rm s3://sagegate-development-training-ap-southeast-2 --recursive" in destroyed.stdout


def test_every_global_name_in_the_templates_takes_the_region_suffix() -> None:
    """Bucket and role names are account-wide: each one a template sets must end in GlobalNameSuffix."""
    import re

    for template in sorted((ROOT / "cloudformation").glob("*.yaml")):
        text = template.read_text()
        for line in re.findall(r"(?:BucketName|RoleName): .*", text):
            assert "${GlobalNameSuffix}" in line, f"{template.name}: {line}"
        for line in re.findall(r".*:role/\$\{Project\}.*", text):
            assert "${GlobalNameSuffix}" in line, f"{template.name}: {line}"
