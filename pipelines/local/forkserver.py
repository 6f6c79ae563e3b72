"""Warm local jobs: fork each job from a process that has already imported the job libraries.

A local job process otherwise spends most of its life importing pandas, scikit-learn, matplotlib,
MLflow and the ONNX converter (1-3.5 s per job, five jobs per run). `sagegate run` starts this
server for the run's duration; it imports them once, and `container.py` asks it for each job.
The child it forks becomes that job as a fresh interpreter would: its own session (process
group), the job's environment, working directory, `sys.argv` and `sys.path[0]`, the runner's
output streams (passed over the socket), the script run as `__main__`, its kernel name set to
the script's (`ps -o comm`). It dies with the server, which dies with the run. The job code is
unchanged (it imports nothing from `pipelines/`); without a server, or if it cannot be reached,
jobs start as fresh interpreters.

    python -m pipelines.local.forkserver SOCKET
"""

from __future__ import annotations

import ctypes
import functools
import gc
import importlib
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipelines.environ import environment

# What the jobs in containers/ import, in the order the jobs need them. The server accepts at once and
# imports one library at a time while idle, so the first job need not wait for the last job's
# libraries (a job forked before its library is in imports it itself; a missing one is skipped).
PRELOAD = (
    "numpy", "pandas", "joblib", "sklearn.pipeline", "sklearn.preprocessing", "sklearn.ensemble",
    "sklearn.linear_model", "sklearn.metrics", "sklearn.model_selection", "sklearn.inspection", "matplotlib",
    "matplotlib.pyplot", "boto3",
)  # fmt: skip
# Only the register job needs these, and importing MLflow alone takes ~0.8 s, which a job asking meanwhile
# would wait out: a successor forked from the server imports them while the server keeps accepting, then
# takes over accepting (the server still answers for the jobs it forked). A job that imports one of them
# (`successor_library`) and asks before that waits for the successor instead of importing it again itself.
PRELOAD_LATE = (
    "mlflow", "mlflow.sklearn", "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store", "skl2onnx", "onnxruntime",
)  # fmt: skip
# What the successor does once it accepts, while idle, so that the jobs it forks after inherit it: the
# register job's other first-time costs, 0.2-0.25 s each, which would delay the takeover if done before
# it (the bundled run's register job then asks first, is forked without MLflow, and imports it: +1.2 s).
# `module` is imported (MLflow's `Model.log` imports mlflow.pyfunc lazily); `module:function` is called:
# MLflow maps installed packages to modules the first time it checks a model's requirements, reading
# every installed distribution. That function is MLflow's private one (mlflow is pinned in setup.cfg);
# tests/test_forkserver.py fails when an upgrade drops it or its cache. A missing one is skipped, and
# the job does the work itself.
WARM_UP_LATE = ("mlflow.pyfunc", "mlflow.utils.requirements_utils:_init_modules_to_packages_map")
# The successor's imports' niceness. At 19 (the lowest priority) they got so little of a busy host that the
# bundled run's register job often came before the takeover and imported MLflow itself (2 of 7 runs: register
# 3.6-4.2 s instead of 1.2-1.8 s); at 5 it came after in 7 of 7 (the run's median 9.49 -> 8.70 s), and the
# 200k-row run's time outside the fit was unchanged (medians 13.1 and 12.9 s, 4 runs each).
LATE_NICENESS = 5
SOCKET_VARIABLE = "SAGEGATE_FORKSERVER"
READY_TIMEOUT_SECONDS = 30  # the imports take seconds; the first job may ask before they are done
PR_SET_NAME, PR_SET_PDEATHSIG = 15, 1


def _prctl(option: int, value: Any) -> bool:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: no parent-death signal, no kernel name
        return False
    return True


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux; elsewhere a no-op)."""
    if _prctl(PR_SET_PDEATHSIG, signal.SIGKILL) and os.getppid() == 1:
        os._exit(1)  # the parent died before the request took effect


def request_job(
    socket_path: str, argv: list[str], env: dict[str, str], cwd: str, output_fd: int, after: str = ""
) -> tuple[socket.socket, int]:
    """Ask the server to fork `argv` (`[python, script, *args]`); the open connection answers with the
    exit code when the job ends. `after`: a library of the successor's (`successor_library`) that the job
    imports: the job is forked once the successor has it (asked again when the server says to retry).
    Raises OSError when there is no server to ask."""
    request = {"argv": argv, "env": env, "cwd": cwd, **({"after": after} if after else {})}
    return _forked(socket_path, request, output_fd, _send_request(socket_path, request, output_fd))


def _forked(
    socket_path: str, request: dict[str, Any], output_fd: int, connection: socket.socket
) -> tuple[socket.socket, int]:
    """The connection and the job's pid once the request sent on `connection` is forked, asked again while
    the server says to retry (a library in `after` is the successor's, and it has taken over accepting).
    Raises OSError (the connection closed) when the server answers nothing or is gone."""
    while True:
        try:
            reply = json.loads(_read_line(connection))
            if not reply.get("retry"):
                return connection, int(reply["pid"])
        except (OSError, ValueError, KeyError) as error:
            connection.close()
            raise OSError(f"fork server at {socket_path}: {error}") from None
        connection.close()  # the successor has taken over: it accepts the request now
        connection = _send_request(socket_path, request, output_fd)


def successor_library(script: str) -> str:
    """The first of the successor's libraries (`PRELOAD_LATE`) that the job script at `script` imports, or
    "" (also for a script it cannot read). Such a job that asks while the successor is still importing
    waits for it: forked before, it would import that library itself on top of the successor's import."""
    try:
        source = Path(script).read_text(errors="replace")
    except OSError:
        return ""
    names = "|".join(re.escape(name) for name in PRELOAD_LATE if "." not in name)
    found = re.search(rf"^\s*(?:import|from)\s+({names})\b", source, re.MULTILINE)
    return found.group(1) if found else ""


def _send_request(socket_path: str, request: dict[str, Any], output_fd: int) -> socket.socket:
    """The connection that answers the request: the job's pid once forked, then its exit code."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while not os.path.exists(socket_path) and time.monotonic() < deadline:
        time.sleep(0.02)
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(socket_path)
        socket.send_fds(connection, [json.dumps(request).encode() + b"\n"], [output_fd])
    except OSError as error:
        connection.close()
        raise OSError(f"fork server at {socket_path}: {error}") from None
    return connection


def _read_line(connection: socket.socket) -> bytes:
    """One reply line, and not a byte past it: a buffered reader would also swallow the exit line of a job
    that ended before its pid was read, and the next read would find only the end of the stream."""
    line = bytearray()
    while not line.endswith(b"\n"):
        byte = connection.recv(1)
        if not byte:
            break
        line += byte
    return bytes(line)


def wait_job(connection: socket.socket, timeout: float | None) -> int:
    """The job's exit code; raises TimeoutError while it still runs after `timeout` seconds."""
    connection.settimeout(timeout)
    try:
        line = _read_line(connection)
    except TimeoutError:
        raise
    except OSError:
        return -signal.SIGKILL  # the server died, and its jobs with it
    return int(json.loads(line)["exit"]) if line else -signal.SIGKILL


class ModuleRun:
    """`python -m module *arguments` in the caller's environment and folder, started now and not waited
    for: the caller goes on meanwhile and asks for `result()` (once) when it needs it. Forked by the
    caller's server once the server has imported `after` (forked earlier, it would import the libraries
    again itself, on the cores the caller and the server need), or a fresh interpreter when there is none."""

    def __init__(self, module: str, arguments: list[str], after: str) -> None:
        argv = [sys.executable, "-m", module, *arguments]
        self._request = {"argv": argv, "env": dict(os.environ), "cwd": os.getcwd(), "after": after}
        self._output = tempfile.TemporaryFile()
        self._connection: socket.socket | None = None
        self._process: subprocess.Popen[bytes] | None = None
        try:
            self._server = os.environ[SOCKET_VARIABLE]
            self._connection = _send_request(self._server, self._request, self._output.fileno())
        except (KeyError, OSError):
            self._process = subprocess.Popen(argv, stdout=self._output, stderr=subprocess.STDOUT)

    def result(self) -> tuple[int, str]:
        """Its exit code and output, once it has ended."""
        with self._output:
            if self._connection is not None:
                try:  # its pid, once the server (or its successor, for a library of the successor's) forked it
                    connection, _ = _forked(self._server, self._request, self._output.fileno(), self._connection)
                except OSError:
                    code = -signal.SIGKILL
                else:
                    with connection:
                        code = wait_job(connection, None)
            else:
                assert self._process is not None
                code = self._process.wait()
            self._output.seek(0)
            return code, self._output.read().decode(errors="replace")


def run_module(module: str, arguments: list[str], after: str = "") -> tuple[int, str]:
    """`ModuleRun(module, arguments, after).result()`: its exit code and output."""
    return ModuleRun(module, arguments, after).result()


def _become_job(request: dict[str, Any], output_fd: int) -> None:
    """In the forked child: turn into the job and never return."""
    code = 1
    try:
        gc.enable()  # the job's own objects only: what it inherited is frozen (`serve`)
        os.setsid()
        die_with_parent()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        os.dup2(output_fd, 1)
        os.dup2(output_fd, 2)
        os.close(output_fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        sys.stdout.reconfigure(write_through=True)  # type: ignore[union-attr]
        sys.stderr.reconfigure(write_through=True)  # type: ignore[union-attr]
        script, *arguments = request["argv"][1:]
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        import runpy

        try:
            if script == "-m":  # `python -m module ...`: a module of the server's own packages
                _prctl(PR_SET_NAME, arguments[0].encode()[:15])
                sys.argv = arguments
                sys.path[0] = request["cwd"]
                runpy.run_module(arguments[0], run_name="__main__", alter_sys=True)
            else:
                _prctl(PR_SET_NAME, Path(script).name.encode()[:15])
                sys.argv = [script, *arguments]
                sys.path[0] = str(Path(script).resolve().parent)
                runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as exit_:
            if exit_.code is None or isinstance(exit_.code, int):
                code = exit_.code or 0
            else:
                print(exit_.code, file=sys.stderr)  # sys.exit("message"), as the interpreter prints it
                code = 1
        except BaseException:
            traceback.print_exc()
            code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve(socket_path: str) -> None:
    """Serve job requests on `socket_path`. The collector stays off in the server and its successor, and
    everything they made is frozen before each fork (`gc.freeze()`, as Python's documentation advises
    for fork without exec): a job's collections then never walk the libraries it inherited, which would
    write to the header of every object they hold and so copy each of their pages into the job."""
    gc.disable()
    die_with_parent()  # the run that started it
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MPLBACKEND", "Agg")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    partial = f"{socket_path}.partial"
    Path(partial).unlink(missing_ok=True)
    listener.bind(partial)
    listener.listen(16)
    listener.setblocking(False)  # the server and its successor both watch it while they hand over
    os.replace(partial, socket_path)  # the socket appears only once the server accepts
    _serve(listener, [functools.partial(_preload, module) for module in PRELOAD], PRELOAD_LATE)


def _serve(listener: socket.socket, pending: list[Callable[[], None]], late: tuple[str, ...]) -> None:
    """Accept job requests and fork each, do `pending` one item at a time while idle, then fork the
    successor that imports `late` and takes over accepting; answer each job's exit code until killed."""
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_write)
    successor_ready: int | None = None  # readable once the successor accepts in this server's place
    successor = 0
    accepting = True
    waiting: dict[int, socket.socket] = {}  # job pid -> the runner connection awaiting its exit
    # requests to fork once the server has imported their "after" module (or has nothing left to import)
    held: list[tuple[dict[str, Any], int, socket.socket]] = []
    # requests whose "after" module the successor imports: told to ask again once it has taken over
    for_successor: list[tuple[dict[str, Any], int, socket.socket]] = []

    def fork(request: dict[str, Any], output_fd: int, connection: socket.socket) -> None:
        gc.freeze()
        pid = os.fork()
        if pid == 0:
            others = (other for _, _, other in (*held, *for_successor))
            for inherited in (listener, connection, *waiting.values(), *others):
                inherited.close()
            for descriptor in (wake_read, wake_write, *([successor_ready] if successor_ready is not None else [])):
                os.close(descriptor)
            _become_job(request, output_fd)
        os.close(output_fd)
        try:
            connection.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        except OSError:
            pass  # the runner is gone; its job runs on and is reaped with the others
        waiting[pid] = connection

    while True:
        watched = [wake_read, *([listener] if accepting else []), *([successor_ready] if successor_ready else [])]
        ready, _, _ = select.select(watched, [], [], 0 if pending or late else None)
        if not ready and pending:
            pending.pop(0)()
            for due in [item for item in held if not pending or item[0]["after"] in sys.modules]:
                held.remove(due)
                fork(*due)
            continue
        if not ready and late:
            waiting_for_it = [item for _, fd, connection in for_successor for item in (fd, connection)]
            inherited = [wake_read, wake_write, *waiting.values(), *waiting_for_it]
            successor, successor_ready = _fork_successor(listener, late, inherited)
            late = ()
            continue
        if successor_ready is not None and successor_ready in ready:
            accepting = os.read(successor_ready, 1) != b"+"  # else it died importing: this server goes on
            os.close(successor_ready)
            successor_ready = None
            for request, output_fd, connection in for_successor:
                if accepting:  # no successor: forked here, the job imports the library itself
                    fork(request, output_fd, connection)
                    continue
                os.close(output_fd)
                try:
                    connection.sendall(b'{"retry": true}\n')
                except OSError:
                    pass  # the runner is gone
                connection.close()
            for_successor.clear()
        if wake_read in ready:
            os.read(wake_read, 4096)
        while waiting or successor:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid == successor:  # it died: requests would wait in the backlog for nobody
                successor, accepting = 0, True
            connection = waiting.pop(pid, None)
            if connection is not None:
                try:
                    connection.sendall(json.dumps({"exit": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
                except OSError:
                    pass  # the runner is gone
                connection.close()
        if accepting and listener in ready:
            try:
                connection, _ = listener.accept()
                message, fds, _, _ = socket.recv_fds(connection, 1 << 20, 1)
                request = json.loads(message.split(b"\n", 1)[0])
            except (BlockingIOError, InterruptedError):  # the successor took this one
                continue
            except (OSError, ValueError):
                connection.close()
                continue
            if request.get("after") in PRELOAD_LATE and (late or successor_ready is not None):
                for_successor.append((request, fds[0], connection))
            elif pending and request.get("after") and request["after"] not in sys.modules:
                held.append((request, fds[0], connection))
            else:
                fork(request, fds[0], connection)


def _preload(module: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError:  # not in this environment: a job that needs it fails as it would anyway
        pass


def _warm_up(item: str) -> None:
    module, _, function = item.partition(":")
    try:
        imported = importlib.import_module(module)
        if function:
            getattr(imported, function)()
    except Exception:  # not in this environment, or not in this version: each job does it itself
        pass


def _preload_idle(modules: tuple[str, ...]) -> None:
    """Import `modules` at a lower CPU priority (`LATE_NICENESS`): the successor imports while the run's first
    jobs and uploads want both cores, and should take mostly what they leave. Linux sets niceness per thread,
    so the successor's main thread, which forks the later jobs, keeps its own (a process cannot lower it back)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LATE_NICENESS)
    except OSError:
        pass  # not permitted here: import at normal priority
    for module in modules:
        _preload(module)


def _fork_successor(listener: socket.socket, late: tuple[str, ...], inherited: list[Any]) -> tuple[int, int]:
    """Fork the successor: its pid, and the pipe end that becomes readable when it accepts."""
    ready_read, ready_write = os.pipe()
    gc.freeze()
    pid = os.fork()
    if pid == 0:
        try:
            die_with_parent()  # and its jobs with it
            for item in inherited:
                item.close() if isinstance(item, socket.socket) else os.close(item)
            os.close(ready_read)
            importing = threading.Thread(target=_preload_idle, args=(late,), name="preload-late")
            importing.start()
            importing.join()
            os.write(ready_write, b"+")
            os.close(ready_write)
            # its warm-ups after it takes over (the imports alone delay that enough), while idle, in this
            # thread: a fork while another thread runs could leave the job a lock held by nobody
            _serve(listener, [functools.partial(_warm_up, item) for item in WARM_UP_LATE], ())
        finally:
            os._exit(1)
    os.close(ready_write)
    return pid, ready_read


@contextmanager
def running(folder: Path) -> Iterator[None]:
    """A fork server for the jobs this process starts, from now until the block ends: it imports while
    the caller prepares, and the jobs find it through SAGEGATE_FORKSERVER."""
    # AF_UNIX paths are limited to ~107 bytes: the socket lives under the temp dir, one per server
    path = Path(tempfile.gettempdir()) / f"sagegate-jobs-{uuid.uuid4().hex[:16]}.sock"
    with (folder / "forkserver.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", __name__, str(path)], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            cwd=folder, preexec_fn=die_with_parent,
        )  # fmt: skip
    try:
        with environment({SOCKET_VARIABLE: str(path)}):
            yield
    finally:
        process.kill()  # its jobs have ended (each runner waited for its own); any left die with it
        process.wait()
        path.unlink(missing_ok=True)


if __name__ == "__main__":
    serve(sys.argv[1])
