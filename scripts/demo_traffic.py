"""The demo's traffic: fresh Friedman #1 rows sent one by one to a local endpoint through boto3.

`--shift x3=0.5` moves one feature's values (what a drift looks like to the monitor).
"""

from __future__ import annotations

import argparse

from sklearn.datasets import make_friedman1

from pipelines.local.gateway import runtime_client
from pipelines.state import Project, StateHome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default="sagegate-development-friedman1-realtime")
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--seed", type=int, default=101)
    parser.add_argument("--shift", default=None, metavar="FEATURE=DELTA", help="e.g. x3=0.5")
    args = parser.parse_args()
    x, _ = make_friedman1(n_samples=args.rows, n_features=8, random_state=args.seed)
    if args.shift:
        feature, _, delta = args.shift.partition("=")
        x[:, int(feature.removeprefix("x"))] += float(delta)
    client = runtime_client(StateHome.from_env(), Project.from_env())
    for row in x:
        body = ",".join(f"{v:.6f}" for v in row)
        client.invoke_endpoint(EndpointName=args.endpoint, ContentType="text/csv", Body=body)
    print(f"sent {args.rows} rows to {args.endpoint}" + (f" with {args.shift}" if args.shift else ""))


if __name__ == "__main__":
    main()
