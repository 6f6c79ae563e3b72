"""Time a command as a whole process and sample the peak memory of every process in its tree.

psutil polls the tree every 20 ms (short-lived processes can be missed between samples; every job
here lives for seconds); the proportional set size, when asked for, every 240 ms: reading it makes the
kernel walk each process's page tables, and at every sample it cost a 200k-row `sagegate run` ~1 s of
its 25 s on two cores (the single-process baseline paid nothing), so it skewed the very ratio measured.
A process is labelled by its program: `sagegate`, `weed` (the local S3),
`forkserver`, a job script (`train.py`, …; a forked job by its kernel name), `python` otherwise.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import psutil

SAMPLE_SECONDS = 0.02
PSS_EVERY = 12  # samples: the proportional set size every 240 ms


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


def run_measured(
    command: list[str], env: dict[str, str], cwd: Path, proportional: dict[str, float] | None = None
) -> tuple[float, dict[str, float]]:
    """Wall seconds, and the peak resident MB per process label (the largest process of each label).

    `proportional`, when given, is filled with the peak proportional set size (PSS) per label: a page
    shared by n processes counts 1/n in each. A job forked from the job server shares the server's
    imported libraries, which its resident size counts in full although they take no memory of its own."""
    peaks: dict[int, tuple[str, float, float]] = {}
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL)
    root = psutil.Process(process.pid)
    done = threading.Event()

    def sample() -> None:
        samples = 0
        while not done.is_set():
            with_pss = proportional is not None and samples % PSS_EVERY == 0
            samples += 1
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                tree = []
            for member in tree:
                try:
                    if with_pss:
                        full = member.memory_full_info()  # smaps_rollup: the page tables walked
                        rss, pss = full.rss / 2**20, full.pss / 2**20
                    else:
                        rss, pss = member.memory_info().rss / 2**20, 0.0
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                # relabelled at every sample: a forked job takes its script's name just after the fork
                previous_label, previous_rss, previous_pss = peaks.get(member.pid, ("?", 0.0, 0.0))
                name = label(member)
                peaks[member.pid] = (
                    previous_label if name == "?" else name,
                    max(previous_rss, rss),
                    max(previous_pss, pss),
                )
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
    for name, rss, pss in peaks.values():
        if name == "?":  # gone before its first sample named it
            continue
        by_label[name] = max(by_label.get(name, 0.0), rss)
        if proportional is not None:
            proportional[name] = max(proportional.get(name, 0.0), pss)
    return elapsed, by_label


def memory_line(peaks: dict[str, float]) -> str:
    return ", ".join(f"{name} {mb:.0f} MB" for name, mb in sorted(peaks.items(), key=lambda item: -item[1]))
