#!/usr/bin/env bash
# Deploy sagegate to one AWS environment: training bucket, roles, the runtime image (built by CodeBuild:
# no Docker here), deployment gate, and per model the SageMaker pipeline, its schedules and its
# registration trigger.
#
#   scripts/deploy.sh [development|staging|production] [--region R] [--primary-region R] [--project P] [--dry-run]
#
# Several regions: deploy each with --region; --primary-region (or SAGEGATE_PRIMARY_REGION) names the
# one whose bucket and role names carry no region suffix (S3 and IAM names are global).
#
# Needs: make install (the .venv), the AWS CLI (v1 or v2) with credentials, a region, and
# SAGEGATE_MLFLOW_TRACKING_SERVER_ARN (the SageMaker managed MLflow server holding the registry).
# --dry-run prints every command and the rendered parameters and calls nothing on AWS.
# Idempotent: artifact keys are content hashes and stacks deploy with --no-fail-on-empty-changeset.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ENVIRONMENT=development
REGION="${AWS_REGION:-${AWS_DEFAULT_REGION:-}}"
PROJECT="${SAGEGATE_PROJECT:-sagegate}"
PRIMARY_REGION="${SAGEGATE_PRIMARY_REGION:-}"
DRY_RUN=false
BUILD="${SAGEGATE_BUILD_DIR:-$ROOT/build}"

die() { echo "deploy.sh: $*" >&2; exit 1; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    development|staging|production) ENVIRONMENT="$1" ;;
    --region) REGION="${2:?--region needs a value}"; shift ;;
    --primary-region) PRIMARY_REGION="${2:?--primary-region needs a value}"; shift ;;
    --project) PROJECT="${2:?--project needs a value}"; shift ;;
    --dry-run) DRY_RUN=true ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (expected development|staging|production, --region, --primary-region, --project, --dry-run)" ;;
  esac
  shift
done

# -- prerequisites --------------------------------------------------------------------------------
PYTHON="$ROOT/.venv/bin/python"
[[ -x "$PYTHON" ]] || die "no project virtualenv: run 'make install' first"
if $DRY_RUN; then
  ACCOUNT="${SAGEGATE_ACCOUNT_ID:-123456789012}"
  REGION="${REGION:-us-east-1}"
  MLFLOW_ARN="${SAGEGATE_MLFLOW_TRACKING_SERVER_ARN:-arn:aws:sagemaker:${REGION}:${ACCOUNT}:mlflow-tracking-server/${PROJECT}-${ENVIRONMENT}}"
else
  command -v aws > /dev/null || die "the AWS CLI is not installed: https://docs.aws.amazon.com/cli/latest/userguide/getting-started-install.html"
  ACCOUNT="$(aws sts get-caller-identity --query Account --output text 2> /dev/null)" \
    || die "no usable AWS credentials: run 'aws configure' or 'aws sso login' (aws sts get-caller-identity failed)"
  REGION="${REGION:-$(aws configure get region || true)}"
  [[ -n "$REGION" ]] || die "no AWS region: pass --region or set AWS_REGION"
  MLFLOW_ARN="${SAGEGATE_MLFLOW_TRACKING_SERVER_ARN:-}"
  [[ -n "$MLFLOW_ARN" ]] || die "set SAGEGATE_MLFLOW_TRACKING_SERVER_ARN to the SageMaker MLflow tracking server ARN"
fi

echo "sagegate deploy: project=$PROJECT environment=$ENVIRONMENT region=$REGION account=$ACCOUNT$($DRY_RUN && echo ' (dry run)')"

# -- steps (sourced from the generated plan) -----------------------------------------------------
run() {
  echo "+ $(printf '%q ' "$@")"
  $DRY_RUN || "$@"
}

exists() {  # s3://bucket/key is already there (content-addressed: then it holds this content)
  local bucket="${1#s3://}"
  aws s3api head-object --region "$REGION" --bucket "${bucket%%/*}" --key "${bucket#*/}" > /dev/null 2>&1
}

upload() {  # an object that is already there is not uploaded again; no --sse: `aws:kms` alone would pick
            # the AWS-managed aws/s3 key, the bucket default applies the project key
  if $DRY_RUN; then
    echo "+ aws s3api head-object ($2) || aws s3 cp $1 $2"
  elif ! exists "$2"; then
    run aws s3 cp --region "$REGION" "$1" "$2" --only-show-errors
  fi
}

package_lambda() {  # handler + pinned requirements for the Lambda runtime, built and uploaded unless there
  local kind="$1" archive="$2" uri="$3"
  if $DRY_RUN; then
    echo "+ aws s3api head-object ($uri) || { python -m pipelines.lambda_package $kind $archive; aws s3 cp $archive $uri; }"
  elif exists "$uri"; then
    echo "lambda package $uri exists: not rebuilt"
  else
    run "$PYTHON" -m pipelines.lambda_package "$kind" "$archive"
    upload "$archive" "$uri"
  fi
}

build_image() {  # CodeBuild builds the runtime image unless ECR already holds this content's tag
  local build_project="$1" repository="$2" tag="$3" id status
  if $DRY_RUN; then
    echo "+ aws ecr describe-images --repository-name $repository --image-ids imageTag=$tag || aws codebuild start-build --project-name $build_project (then poll batch-get-builds)"
    return
  fi
  if aws ecr describe-images --region "$REGION" --repository-name "$repository" --image-ids "imageTag=$tag" > /dev/null 2>&1; then
    echo "image $repository:$tag exists: not rebuilt"
    return
  fi
  id="$(aws codebuild start-build --region "$REGION" --project-name "$build_project" --query build.id --output text)"
  echo "building $repository:$tag with CodeBuild ($id; about 5 minutes)"
  while true; do
    status="$(aws codebuild batch-get-builds --region "$REGION" --ids "$id" --query 'builds[0].buildStatus' --output text)"
    case "$status" in
      SUCCEEDED) echo "image $repository:$tag built"; return ;;
      IN_PROGRESS) sleep 15 ;;
      *) die "image build $id ended $status: see CloudWatch Logs /aws/codebuild/$build_project" ;;
    esac
  done
}

outputs() {
  run aws cloudformation describe-stacks --region "$1" --stack-name "$2" --query "Stacks[0].Outputs" --output table
}

OUT="$BUILD/deploy/$ENVIRONMENT"
echo "rendering templates' parameters, the gate ASL and the pipeline definitions into $OUT"
"$PYTHON" -m pipelines.deploy_plan "$ENVIRONMENT" --project "$PROJECT" --region "$REGION" --account "$ACCOUNT" \
  --mlflow-tracking-server-arn "$MLFLOW_ARN" --out "$OUT" ${PRIMARY_REGION:+--primary-region "$PRIMARY_REGION"}
echo "validating templates"
"$ROOT/.venv/bin/cfn-lint" --append-rules cfn_lint_serverless.rules -- cloudformation/*.yaml || die "templates failed cfn-lint"
# shellcheck source=/dev/null
source "$OUT/commands.sh"
echo "done: $ENVIRONMENT deployed$($DRY_RUN && echo ' (dry run: nothing was called on AWS)')"
