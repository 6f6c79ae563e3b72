"""The gateway's hop to a model server: real `serve.py` processes on a unix socket, driven through
`ModelServer.forward` on one event loop as the gateway drives it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import joblib
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from pipelines.local.model_server import ModelServer
from tests.conftest import DATA
from tests.test_compiled_serving import container_module

BREAST_CANCER = pd.read_csv(DATA / "breast_cancer.csv")
FEATURES = [c for c in BREAST_CANCER.columns if c != "label"]
HEADERS = {"Content-Type": "text/csv", "Accept": "application/json"}


def served_model(tmp_path: Path) -> tuple[Path, Pipeline]:
    register = container_module("register", "register.py")
    model = Pipeline([("scale", StandardScaler()), ("model", LogisticRegression(max_iter=500))])
    model.fit(BREAST_CANCER[FEATURES], BREAST_CANCER["label"])
    trained = tmp_path / "trained"
    trained.mkdir()
    joblib.dump(model, trained / "model.joblib")
    meta = {"features": FEATURES, "task": "classification", "classes": [0, 1], "model_class": "LogisticRegression"}
    return register.served_archive(trained, meta, None, {"runtime": "sklearn", "reason": "test"}), model


def test_the_hop_keeps_connections_alive_and_survives_restarts_and_kills(tmp_path: Path) -> None:
    archive, model = served_model(tmp_path)
    server = ModelServer(tmp_path / "server", "m", archive, workers=1, cooldown=60)
    rows = BREAST_CANCER[FEATURES].iloc[:5]
    body = rows.to_csv(header=False, index=False).encode()
    expected = model.predict(rows).tolist()

    async def predictions() -> list[int]:
        status, headers, payload = await server.forward(body, HEADERS)
        assert (status, headers["content-type"]) == (200, "application/json"), payload
        return json.loads(payload)["predictions"]

    async def scenario() -> None:
        for _ in range(20):  # one client, one request at a time: one connection, reused
            assert await predictions() == expected
        assert server.starts == 1 and len(server.idle) == 1
        first = server.idle[0]
        assert await predictions() == expected and server.idle == [first]

        answers = await asyncio.gather(*(predictions() for _ in range(4)))  # four at once: up to four connections
        assert answers == [expected] * 4 and 1 <= len(server.idle) <= 4

        process = server.process
        server.stop()  # scaled to zero: the next request starts it again; the old connections are retired
        assert process is not None and process.returncode == 0  # a graceful stop, not the SIGKILL after 5 s
        assert await predictions() == expected
        assert server.starts == 2 and all(c.generation == 2 for c in server.idle) and first.transport.is_closing()

        assert server.process is not None
        os.killpg(server.process.pid, signal.SIGKILL)  # killed under its pooled connections
        server.process.wait()
        assert await predictions() == expected  # the broken connection is retried once, after a restart
        assert server.starts == 3

    try:
        asyncio.run(scenario())
    finally:
        server.stop()
