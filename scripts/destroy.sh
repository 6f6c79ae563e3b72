#!/usr/bin/env bash
# Remove a sagegate environment: gate-created endpoints, then the stacks in reverse order.
#
#   scripts/destroy.sh ENV [--region R] [--primary-region R] [--project P] [--delete-data] [--dry-run]
#
# One region at a time (--region); --primary-region as for deploy.sh, so the bucket's name matches.
#
# The development bucket (DeletionPolicy Delete) is emptied and deleted with its stack. Staging
# and production buckets and keys are retained (DeletionPolicy Retain): their data stays unless
# --delete-data is given, which empties and deletes the bucket too.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ENVIRONMENT=""
REGION="${AWS_REGION:-${AWS_DEFAULT_REGION:-}}"
PROJECT="${SAGEGATE_PROJECT:-sagegate}"
PRIMARY_REGION="${SAGEGATE_PRIMARY_REGION:-}"
DRY_RUN=false
DELETE_DATA=false

die() { echo "destroy.sh: $*" >&2; exit 1; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    development|staging|production) ENVIRONMENT="$1" ;;
    --region) REGION="${2:?--region needs a value}"; shift ;;
    --primary-region) PRIMARY_REGION="${2:?--primary-region needs a value}"; shift ;;
    --project) PROJECT="${2:?--project needs a value}"; shift ;;
    --delete-data) DELETE_DATA=true ;;
    --dry-run) DRY_RUN=true ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) die "unknown argument '$1'" ;;
  esac
  shift
done
[[ -n "$ENVIRONMENT" ]] || die "which environment? scripts/destroy.sh development|staging|production"

if $DRY_RUN; then
  REGION="${REGION:-us-east-1}"
else
  command -v aws > /dev/null || die "the AWS CLI is not installed"
  aws sts get-caller-identity > /dev/null 2>&1 || die "no usable AWS credentials (aws sts get-caller-identity failed)"
  REGION="${REGION:-$(aws configure get region || true)}"
  [[ -n "$REGION" ]] || die "no AWS region: pass --region or set AWS_REGION"
fi

run() {
  echo "+ $(printf '%q ' "$@")"
  $DRY_RUN || "$@"
}

PREFIX="$PROJECT-$ENVIRONMENT"
BUCKET="$("$ROOT/.venv/bin/python" -c 'import sys; from pipelines.state import Project
print(Project(sys.argv[1], sys.argv[2], sys.argv[3], primary_region=sys.argv[4] or None).bucket)' \
  "$PROJECT" "$ENVIRONMENT" "$REGION" "$PRIMARY_REGION")" || die "no project virtualenv: run 'make install' first"
MODELS=()
for config in models/*.yaml; do
  MODELS+=("$(sed -n 's/^name:[[:space:]]*\([a-z0-9-]*\).*/\1/p' "$config")")
done

echo "sagegate destroy: $PREFIX in $REGION$($DRY_RUN && echo ' (dry run)')"

# Endpoints are created by the gate, not by the stacks: they cost money until deleted.
if $DRY_RUN; then
  echo "+ aws sagemaker list-endpoints --name-contains $PREFIX- | delete each endpoint"
else
  for endpoint in $(aws sagemaker list-endpoints --region "$REGION" --name-contains "$PREFIX-" \
      --query "Endpoints[].EndpointName" --output text); do
    run aws sagemaker delete-endpoint --region "$REGION" --endpoint-name "$endpoint"
  done
fi

for model in "${MODELS[@]}"; do
  run aws cloudformation delete-stack --region "$REGION" --stack-name "$PREFIX-$model"
  run aws cloudformation wait stack-delete-complete --region "$REGION" --stack-name "$PREFIX-$model"
done
for stack in gate images iam-roles; do
  run aws cloudformation delete-stack --region "$REGION" --stack-name "$PREFIX-$stack"
  run aws cloudformation wait stack-delete-complete --region "$REGION" --stack-name "$PREFIX-$stack"
done

empty_bucket() {
  run aws s3 rm "s3://$BUCKET" --recursive --region "$REGION" --only-show-errors
  if $DRY_RUN; then
    echo "+ delete every object version and delete marker of $BUCKET (aws s3api list-object-versions | delete-objects)"
  else
    "$ROOT/.venv/bin/python" - "$BUCKET" "$REGION" <<'PY'
import sys, boto3
bucket = boto3.resource("s3", region_name=sys.argv[2]).Bucket(sys.argv[1])
bucket.object_versions.delete()
PY
  fi
}

if [[ "$ENVIRONMENT" == development ]]; then
  empty_bucket  # DeletionPolicy Delete: the stack deletes the (empty) bucket
  run aws cloudformation delete-stack --region "$REGION" --stack-name "$PREFIX-training-bucket"
  run aws cloudformation wait stack-delete-complete --region "$REGION" --stack-name "$PREFIX-training-bucket"
else
  run aws cloudformation delete-stack --region "$REGION" --stack-name "$PREFIX-training-bucket"
  run aws cloudformation wait stack-delete-complete --region "$REGION" --stack-name "$PREFIX-training-bucket"
  if $DELETE_DATA; then
    echo "--delete-data: emptying and deleting the retained bucket $BUCKET"
    empty_bucket
    run aws s3 rb "s3://$BUCKET" --region "$REGION"
    echo "the KMS key alias/$PREFIX-training is retained; schedule its deletion with 'aws kms schedule-key-deletion' once nothing needs it"
  else
    echo "kept: bucket $BUCKET and key alias/$PREFIX-training are retained (DeletionPolicy Retain) with their data."
    echo "      Nothing in them was deleted. Re-run with --delete-data to empty and delete the bucket."
  fi
fi
echo "done$($DRY_RUN && echo ' (dry run: nothing was called on AWS)')"
