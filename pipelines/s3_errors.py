"""What an S3 error says about the object asked for, read the same way by every caller.

A GET names a missing key `NoSuchKey` and a missing bucket `NoSuchBucket`; a HEAD has no body, so
botocore reports its status, `404`, which some servers call `NotFound`. Anything else (access denied,
a throttle, a server error) is a failure to read, not an absence, and must not pass for one.
"""

from __future__ import annotations

from botocore.exceptions import ClientError

MISSING_CODES = frozenset({"404", "NotFound", "NoSuchKey", "NoSuchBucket"})


def is_missing(error: ClientError) -> bool:
    """True when the object or its bucket does not exist."""
    return error.response.get("Error", {}).get("Code") in MISSING_CODES
