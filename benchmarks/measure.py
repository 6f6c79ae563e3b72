"""Time a command as a whole process and record the peak memory of every process in its tree.

The peak resident size is the kernel's own high-water mark (`VmHWM` in /proc/PID/status): exact for
every process that is still alive at a sample after its peak, so the tree is read every 50 ms from
/proc directly (children from /proc/PID/task/TID/children). The previous sampler (psutil's recursive
`children()`, `memory_info()`, `cmdline()` and `name()` of every process every 20 ms) cost 1.1-1.3 s of
CPU over a 9-11 s bundled `sagegate run` on two cores, time the single-process baseline never paid
(its second core was idle): the measurement skewed the ratio it measured. This one costs ~0.1 s.
The proportional set size, when asked for, is sampled every 500 ms: reading it makes the kernel walk
each process's page tables. A process is labelled by its program: `sagegate`, `weed` (the local S3),
`forkserver`, a job script (`train.py`, …; a forked job by its kernel name), `python` otherwise.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import psutil

SAMPLE_SECONDS = 0.05
PSS_EVERY = 10  # samples: the proportional set size every 500 ms


def label(process: psutil.Process) -> str:
    try:
        argv, name = process.cmdline(), process.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "?"
    if name.endswith(".py"):  # a job forked by the warm runner: the kernel name is its script's
        return name
    for part in argv[1:4] + argv[:1]:
        name = Path(part).name
        if name.endswith(".py") or name in {"sagegate", "weed", "gunicorn"}:
            return name
        if part in ("-m",):
            continue
    if "-m" in argv:
        return argv[argv.index("-m") + 1].rsplit(".", 1)[-1]
    return Path(argv[0]).name if argv else "?"


def label_of(pid: int) -> str:
    try:
        return label(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return "?"


def process_tree(root: int) -> list[int]:
    """`root` and its descendants, each thread's children read from /proc (a process started from any
    thread is found)."""
    found, pending = [], [root]
    while pending:
        pid = pending.pop()
        found.append(pid)
        try:
            for thread in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{thread}/children") as children:
                    pending.extend(int(child) for child in children.read().split())
        except OSError:  # gone meanwhile
            continue
    return found


def status(pid: int) -> tuple[str, float] | None:
    """The kernel name and peak resident MB (VmHWM) of `pid`; None once it is gone (or a zombie)."""
    try:
        with open(f"/proc/{pid}/status") as file:
            text = file.read()
    except OSError:
        return None
    name, peak = "", None
    for line in text.splitlines():
        if line.startswith("Name:"):
            name = line.partition(":")[2].strip()
        elif line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
            break
    return None if peak is None else (name, peak)


def run_measured(
    command: list[str], env: dict[str, str], cwd: Path, proportional: dict[str, float] | None = None
) -> tuple[float, dict[str, float]]:
    """Wall seconds, and the peak resident MB per process label (the largest process of each label).

    `proportional`, when given, is filled with the peak proportional set size (PSS) per label: a page
    shared by n processes counts 1/n in each. A job forked from the job server shares the server's
    imported libraries, which its resident size counts in full although they take no memory of its own."""
    # (pid, label) -> peak resident and proportional MB. Keyed by label too: a process forked to exec a
    # program is, until the exec, a copy of its parent (its high-water mark the parent's size), which
    # counts under the parent's label, not the program's (a job runner once showed the CLI's 247 MB)
    peaks: dict[tuple[int, str], tuple[float, float]] = {}
    names: dict[tuple[int, str], str] = {}  # (pid, kernel name) -> label: a fork renamed is labelled again
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL)
    done = threading.Event()

    def sample() -> None:
        samples = 0
        while not done.is_set():
            with_pss = proportional is not None and samples % PSS_EVERY == 0
            samples += 1
            for pid in process_tree(process.pid):
                read = status(pid)
                if read is None:
                    continue
                kernel_name, rss = read
                if (pid, kernel_name) not in names:
                    names[pid, kernel_name] = label_of(pid)
                pss = 0.0
                if with_pss:
                    try:
                        pss = psutil.Process(pid).memory_full_info().pss / 2**20  # smaps_rollup
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        pass
                name = names[pid, kernel_name]
                if name != "?":  # gone before it was named
                    previous_rss, previous_pss = peaks.get((pid, name), (0.0, 0.0))
                    peaks[pid, name] = (max(previous_rss, rss), max(previous_pss, pss))
            done.wait(SAMPLE_SECONDS)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = process.wait()
    elapsed = time.perf_counter() - started
    done.set()
    sampler.join()
    if code != 0:
        raise SystemExit(f"{' '.join(command)} exited with {code}")
    by_label: dict[str, float] = {}
    for (_, name), (rss, pss) in peaks.items():
        by_label[name] = max(by_label.get(name, 0.0), rss)
        if proportional is not None:
            proportional[name] = max(proportional.get(name, 0.0), pss)
    return elapsed, by_label


def memory_line(peaks: dict[str, float]) -> str:
    return ", ".join(f"{name} {mb:.0f} MB" for name, mb in sorted(peaks.items(), key=lambda item: -item[1]))
