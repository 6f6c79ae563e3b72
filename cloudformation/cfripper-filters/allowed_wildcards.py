"""cfripper exceptions, each with its reason. Loaded by `make scan` (--rules-filters-folder)."""

from cfripper.config.filter import Filter
from cfripper.model.enums import RuleMode

LOG_DELIVERY_ACTIONS = [
    "logs:CreateLogDelivery",
    "logs:GetLogDelivery",
    "logs:UpdateLogDelivery",
    "logs:DeleteLogDelivery",
    "logs:ListLogDeliveries",
    "logs:PutResourcePolicy",
    "logs:DescribeResourcePolicies",
    "logs:DescribeLogGroups",
]

FILTERS = [
    Filter(
        reason=(
            "Step Functions execution logging: the CloudWatch Logs delivery APIs have no resource-level "
            "permissions (AWS documents Resource '*' for them); the role can only configure log delivery."
        ),
        rule_mode=RuleMode.ALLOWED,
        eval={
            "and": [
                {"eq": [{"ref": "logical_id"}, "StatesRole"]},
                {"in": [{"ref": "action"}, LOG_DELIVERY_ACTIONS]},
            ]
        },
        rules={"WildcardResourceRule"},
    ),
    Filter(
        reason=(
            "AWS's default key policy statement: kms:* for the account root delegates access control to "
            "IAM policies (which grant only Decrypt/GenerateDataKey); without it the key is unmanageable."
        ),
        rule_mode=RuleMode.ALLOWED,
        eval={"eq": [{"ref": "logical_id"}, "TrainingKey"]},
        rules={"GenericResourceWildcardPolicyRule"},
    ),
    Filter(
        reason=(
            "Development objects expire after 7/30 days by design; versioning is enabled in staging and "
            "production (asserted by tests/test_templates.py)."
        ),
        rule_mode=RuleMode.ALLOWED,
        eval={"eq": [{"ref": "logical_id"}, "TrainingBucket"]},
        rules={"S3ObjectVersioningRule"},
    ),
]
