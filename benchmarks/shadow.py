"""Shadow test cost on the user's path: what a shadow variant copying every request adds to the caller.

Two versions of serving.py's forest (RandomForest, 100 trees, 20 features) in a fresh state home;
one realtime endpoint serving version 2 with version 1 as its shadow, provisioned alternately with
`sampling_percentage: 100` (every request copied) and `1` (the baseline: the same endpoint shape,
almost no copies). Rounds alternate so both see the same machine; boto3 `invoke_endpoint` through
the gateway at 1 and 16 clients; the report is the ratio of the medians, and the CPU each request
cost the gateway process and the model servers (its children), read from /proc: the profile of
where a copy's cost lands.

    python benchmarks/shadow.py [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil
from serving import CONFIG, ENDPOINT, FEATURES, MODEL, deploy, gateway_load

SAGEGATE = str(Path(sys.executable).parent / "sagegate")


def provision(workdir: Path, sampling: int) -> None:
    shadow = f"deployment.shadow={{version: 1, sampling_percentage: {sampling}}}"
    subprocess.run(
        [SAGEGATE, "provision", "endpoint", "--model", MODEL, "--config", "model.yaml", "--version", "2",
         "--set", shadow],
        cwd=workdir, check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip


def cpu_seconds(home: Path) -> dict[str, float]:
    """User + system CPU so far of the gateway (gunicorn) and of the model servers it started."""
    master = psutil.Process(json.loads((home / "serving" / "gateway.json").read_text())["pid"])
    times = {"gateway": 0.0, "model servers": 0.0}
    for process in [master, *master.children(recursive=True)]:
        try:
            group = "model servers" if any("serve.py" in part for part in process.cmdline()) else "gateway"
            times[group] += sum(process.cpu_times()[:2])
        except psutil.NoSuchProcess:
            continue
    return times


def measured(home: Path, url: str, body: bytes, clients: int, seconds: float) -> tuple[float, float, dict[str, float]]:
    """(req/s, p99 ms, CPU ms per request by process group) of one load case."""
    before = cpu_seconds(home)
    began = time.monotonic()
    rate, p99 = gateway_load(url, body, "text/csv", clients, seconds, ENDPOINT)
    requests = rate * (time.monotonic() - began)
    after = cpu_seconds(home)
    return rate, p99, {name: 1000 * (after[name] - before[name]) / requests for name in after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sagegate-bench-shadow-") as scratch:
        workdir = Path(scratch)
        _, _, url = deploy(workdir)  # version 1
        (workdir / "model.yaml").write_text(CONFIG.replace("random_state: 0", "random_state: 1"))
        subprocess.run([SAGEGATE, "run", "model.yaml"], cwd=workdir, check=True, stdout=subprocess.DEVNULL)  # v2
        body = pd.read_csv(workdir / "data.csv")[FEATURES].head(1).to_csv(header=False, index=False).encode()
        results: dict[tuple[int, int], list[tuple[float, float, dict[str, float]]]] = {}
        for _ in range(args.rounds):
            for sampling in (1, 100):
                provision(workdir, sampling)
                gateway_load(url, body, "text/csv", 4, 1)  # warm both model servers
                for clients in (1, 16):
                    results.setdefault((sampling, clients), []).append(
                        measured(workdir / "state", url, body, clients, args.seconds)
                    )
        subprocess.run([SAGEGATE, "gateway", "stop"], check=False, stdout=subprocess.DEVNULL,
                       env={**os.environ})  # fmt: skip
    print(f"shadow test cost through the gateway (boto3, {args.rounds} alternating rounds of {args.seconds:g} s)")
    groups = ("gateway", "model servers")
    for clients in (1, 16):
        base = [statistics.median(r[i] for r in results[(1, clients)]) for i in (0, 1)]
        copied = [statistics.median(r[i] for r in results[(100, clients)]) for i in (0, 1)]
        print(
            f"  {clients:>2} client(s): {copied[0]:7.1f} vs {base[0]:7.1f} req/s ({copied[0] / base[0]:.3f}×), "
            f"p99 {copied[1]:6.2f} vs {base[1]:6.2f} ms ({copied[1] / base[1]:.3f}×) with every request copied"
        )
        for sampling in (100, 1):
            cpu = {name: statistics.median(r[2][name] for r in results[(sampling, clients)]) for name in groups}
            print(f"      CPU per request at {sampling:>3}%: " + ", ".join(f"{k} {v:.3f} ms" for k, v in cpu.items()))


if __name__ == "__main__":
    main()
