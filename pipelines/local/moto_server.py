"""A moto server standing in for AWS (`AWS_ENDPOINT_URL`), with `aws cloudformation deploy` working.

`python -m pipelines.local.moto_server -H 127.0.0.1 -p PORT` is `python -m moto.server` with the
change-set patch installed (pipelines/local/cfn_patch.py): what the deploy.sh and remote-run tests
talk to, and what a user can point the AWS CLI at to rehearse a deployment offline.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from moto.server import main as serve

    from pipelines.local import cfn_patch

    cfn_patch.install()
    serve(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
