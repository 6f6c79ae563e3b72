"""The warm job runner: a job forked from the preloaded server is the job a fresh interpreter would run."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipelines.local import forkserver
from pipelines.statefiles import process_alive
from tests.conftest import wait_for
from tests.processes import processes

SCRIPT = """
import json, os, sys
import pandas
print("argv", json.dumps(sys.argv))
print("cwd", os.getcwd())
print("path0", sys.path[0])
print("env", os.environ.get("SM_MODEL_DIR"), "PATH" in os.environ)
print("session", os.getsid(0) == os.getpid())
print("comm", open("/proc/self/comm").read().strip())
if sys.argv[1] == "message":
    sys.exit("ERROR: the data is bad")
if sys.argv[1] == "raise":
    raise ValueError("boom")
if sys.argv[1] == "sleep":
    import time
    time.sleep(60)
sys.exit(int(sys.argv[1]))
"""


def run_job(tmp_path: Path, argument: str, timeout: float | None = 60) -> tuple[int, str]:
    script = tmp_path / "code" / "job.py"
    script.parent.mkdir(exist_ok=True)
    script.write_text(SCRIPT)
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    log = tmp_path / f"{argument}.log"
    with log.open("w") as output:
        connection, pid = forkserver.request_job(
            os.environ[forkserver.SOCKET_VARIABLE],
            [sys.executable, str(script), argument],
            {"SM_MODEL_DIR": "/opt/ml/model"},
            str(work),
            output.fileno(),
        )
        with connection:
            try:
                code = forkserver.wait_job(connection, timeout)
            except TimeoutError:
                os.killpg(pid, signal.SIGKILL)
                code = forkserver.wait_job(connection, None)
    return code, log.read_text()


@pytest.fixture
def server(tmp_path: Path):
    with forkserver.running(tmp_path):
        yield


def test_a_forked_job_gets_the_contract_a_fresh_interpreter_gets(server, tmp_path: Path) -> None:
    code, output = run_job(tmp_path, "0")
    assert code == 0, output
    lines = dict(line.split(" ", 1) for line in output.splitlines())
    assert json.loads(lines["argv"]) == [str(tmp_path / "code" / "job.py"), "0"]
    assert lines["cwd"] == str(tmp_path / "work")
    assert lines["path0"] == str(tmp_path / "code")
    assert lines["env"] == "/opt/ml/model False"  # the job's environment only, not the server's
    assert lines["session"] == "True" and lines["comm"] == "job.py"


@pytest.mark.parametrize(
    ("argument", "code", "message"),
    [("3", 3, None), ("message", 1, "ERROR: the data is bad"), ("raise", 1, "ValueError: boom")],
)
def test_exit_codes_and_messages_are_the_interpreters(server, tmp_path: Path, argument, code, message) -> None:
    found, output = run_job(tmp_path, argument)
    assert found == code
    if message:
        assert message in output


def test_a_job_past_its_limit_is_killed_with_its_group(server, tmp_path: Path) -> None:
    code, output = run_job(tmp_path, "sleep", timeout=2)
    assert code == -signal.SIGKILL
    assert "comm job.py" in output


def test_the_server_and_its_jobs_die_with_the_process_that_started_them(tmp_path: Path) -> None:
    script = tmp_path / "sleeper.py"
    script.write_text("import time\ntime.sleep(120)\n")
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, sys, time; from pathlib import Path; from pipelines.local import forkserver\n"
            f"with forkserver.running(Path({str(tmp_path)!r})):\n"
            f"    forkserver.request_job(os.environ['{forkserver.SOCKET_VARIABLE}'], [sys.executable, {str(script)!r}],"
            f" {{}}, {str(tmp_path)!r}, 1)\n"
            "    print('started', flush=True); time.sleep(120)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout.readline().strip() == "started"
    deadline = time.monotonic() + 10
    while not (children := [pid for pid, argv, _ in processes() if "sleeper.py" in argv]):
        assert time.monotonic() < deadline, "the forked job never took its script's name"
        time.sleep(0.05)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while any(process_alive(str(pid)) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(process_alive(str(pid)) for pid in children)


@pytest.mark.parametrize("code", [0, 3])
def test_a_job_that_ends_before_its_pid_is_read_still_reports_its_exit_code(tmp_path: Path, code: int) -> None:
    """A fast job's exit line can arrive in the same read as its pid line; neither may be lost (it once was,
    and such a job looked SIGKILLed)."""
    path = str(tmp_path / "s.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def answer_both_at_once() -> None:
        connection, _ = listener.accept()
        with connection:
            socket.recv_fds(connection, 1 << 16, 1)
            connection.sendall(b'{"pid": 4242}\n{"exit": %d}\n' % code)

    answering = threading.Thread(target=answer_both_at_once, daemon=True)
    answering.start()
    connection, pid = forkserver.request_job(path, [sys.executable, "x.py"], {}, str(tmp_path), 1)
    with connection:
        assert (pid, forkserver.wait_job(connection, 10)) == (4242, code)
    answering.join(10)
    listener.close()


def test_without_a_server_the_caller_is_told_and_can_start_the_job_itself(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(forkserver, "READY_TIMEOUT_SECONDS", 0.2)
    with pytest.raises(OSError, match="fork server at"):
        forkserver.request_job(str(tmp_path / "none.sock"), [sys.executable, "x.py"], {}, str(tmp_path), 1)


def test_a_successor_imports_the_late_libraries_then_forks_the_jobs_in_the_servers_place(tmp_path: Path) -> None:
    """The server forks the first job at once; MLflow (the register job's) is imported by a successor
    meanwhile (at a lower CPU priority), which then forks the jobs (at the caller's), and dies with the server."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import os, sys\n"
        "warmed = getattr(sys.modules.get('mlflow.utils.requirements_utils'), '_MODULES_TO_PACKAGES', None)\n"
        "print(os.getppid(), 'mlflow' in sys.modules, os.nice(0),"
        " bool(warmed and 'sklearn' in warmed and 'mlflow.pyfunc' in sys.modules))\n"
    )

    def job() -> tuple[int, bool, bool]:
        log = tmp_path / "parent.log"
        with log.open("w") as output:
            connection, _ = forkserver.request_job(
                os.environ[forkserver.SOCKET_VARIABLE],
                [sys.executable, str(script)],
                {},
                str(tmp_path),
                output.fileno(),
            )
            with connection:
                assert forkserver.wait_job(connection, 60) == 0
        parent, preloaded, niceness, warmed = log.read_text().split()
        assert int(niceness) == os.nice(0)  # the successor imported niced, in a thread of its own
        return int(parent), preloaded == "True", warmed == "True"

    with forkserver.running(tmp_path):
        server, preloaded, _ = job()
        assert not preloaded  # the server never imports the late libraries itself

        def from_the_successor() -> tuple[int, bool, bool] | None:
            found = job()
            assert found[1] or found[0] == server  # the server forks every job until the successor is ready
            return found if found[1] and found[2] else None

        # MLflow imported, then (WARM_UP_LATE, once the successor accepts) mlflow.pyfunc and MLflow's package
        # map: this times out if an MLflow upgrade drops the function or its cache
        successor = wait_for(from_the_successor, "a job forked with MLflow and its package map", timeout=60)[0]
        assert successor != server
        assert Path(f"/proc/{successor}/stat").read_text().rsplit(")", 1)[1].split()[1] == str(server)
        os.kill(successor, signal.SIGKILL)  # a successor that dies: the server accepts again
        answered: list[tuple[int, bool, bool]] = []
        asking = threading.Thread(target=lambda: answered.append(job()), daemon=True)
        asking.start()
        asking.join(60)
        assert answered and answered[0][0] == server, "nobody forked the job after the successor died"
    wait_for(lambda: not process_alive(str(successor)), "the successor to die with its server", timeout=10)


def test_a_job_that_imports_a_successor_library_waits_for_the_successor_the_others_do_not(tmp_path: Path) -> None:
    """The register job imports MLflow: asked for while the successor still imports it, it is forked by the
    successor once it has taken over (it would otherwise import MLflow again itself, beside the successor);
    a job that does not import it, asked for at the same moment, is forked at once by the server. The runner
    reads which from the job's script."""
    register = Path(__file__).resolve().parent.parent / "containers" / "register" / "register.py"
    assert forkserver.successor_library(str(register)) == "mlflow"
    assert forkserver.successor_library(str(register.parent.parent / "evaluate" / "evaluate.py")) == ""
    script = tmp_path / "job.py"
    script.write_text("import os, sys\nprint(os.getppid(), 'mlflow' in sys.modules)\n")

    def ask(after: str, log: Path) -> tuple[socket.socket, int]:
        with log.open("w") as output:
            return forkserver.request_job(
                os.environ[forkserver.SOCKET_VARIABLE], [sys.executable, str(script)], {}, str(tmp_path),
                output.fileno(), after,
            )  # fmt: skip

    with forkserver.running(tmp_path):  # both asked for at once: the server is still importing its own libraries
        asked: dict[str, tuple[socket.socket, int]] = {}
        waiting = threading.Thread(target=lambda: asked.update(late=ask("mlflow", tmp_path / "late.log")))
        waiting.start()
        early = ask("", tmp_path / "early.log")
        with early[0]:
            assert forkserver.wait_job(early[0], 60) == 0
        server, preloaded = (tmp_path / "early.log").read_text().split()
        assert preloaded == "False"  # forked at once, by the server
        waiting.join(90)
        connection, _ = asked["late"]
        with connection:
            assert forkserver.wait_job(connection, 60) == 0
        parent, preloaded = (tmp_path / "late.log").read_text().split()
        assert parent != server and preloaded == "True"  # by the successor, MLflow in
        assert Path(f"/proc/{parent}/stat").read_text().rsplit(")", 1)[1].split()[1] == server  # the server's child


@pytest.mark.parametrize("with_server", [True, False])
def test_a_module_runs_as_python_m_would_with_or_without_a_server(tmp_path: Path, monkeypatch, with_server) -> None:
    """`sagegate run` checks the config's scikit-learn part this way: exit 2 and the reason, or 0."""
    config = Path(__file__).resolve().parent.parent / "models" / "breast-cancer.yaml"
    monkeypatch.chdir(tmp_path)  # the module's folder and environment are the caller's
    monkeypatch.delenv(forkserver.SOCKET_VARIABLE, raising=False)
    with forkserver.running(tmp_path) if with_server else contextlib.nullcontext():
        assert forkserver.run_module("pipelines.config", [str(config)]) == (0, "")
        code, output = forkserver.run_module("pipelines.config", [str(config), "model.class=sklearn.svm.SVR"])
    assert code == 2
    assert f"{config}: invalid model config" in output and "is a regressor, task classification" in output


def test_a_module_run_waits_for_the_library_it_names(tmp_path: Path, monkeypatch) -> None:
    """`sagegate run` asks for its config check as the SDK's import ends, while the server still imports:
    forked before the estimator's module is in, the check would import it again itself. A module the
    server never preloads: forked once the preloading is done. A library of the successor's: the server
    tells the caller to ask again once the successor has taken over, which forks it with the library in."""
    (tmp_path / "probe.py").write_text("import sys\nprint(*(name in sys.modules for name in sys.argv[1:]))\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(forkserver.SOCKET_VARIABLE, raising=False)
    with forkserver.running(tmp_path):
        named = forkserver.ModuleRun("probe", ["sklearn.ensemble"], after="sklearn.ensemble")
        unknown = forkserver.ModuleRun("probe", [forkserver.PRELOAD[-1]], after="sklearn.not_preloaded")
        late = forkserver.ModuleRun("probe", ["mlflow"], after="mlflow")
        assert named.result() == (0, "True\n")
        assert unknown.result() == (0, "True\n")
        assert late.result() == (0, "True\n")


def test_a_job_collects_its_own_garbage_and_never_walks_what_it_inherited(tmp_path: Path, monkeypatch) -> None:
    """The server freezes what it made before each fork: a job's collections would otherwise walk every
    object of the libraries it inherited, writing to each one's header and so copying its pages."""
    (tmp_path / "probe.py").write_text(
        "import gc, sys\n"
        "inherited = gc.get_freeze_count()\n"
        "gc.collect()\n"
        "print(gc.isenabled(), inherited > 0, 'sklearn.ensemble' in sys.modules)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(forkserver.SOCKET_VARIABLE, raising=False)
    with forkserver.running(tmp_path):
        assert forkserver.run_module("probe", [], after="sklearn.ensemble") == (0, "True True True\n")
