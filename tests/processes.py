"""The machine's processes as /proc shows them: what the kill tests look for."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path


def processes() -> Iterator[tuple[int, list[str], str]]:
    """(pid, argv, working directory) of every process still readable. The kernel's name for the
    process ends argv: a job forked by the warm runner keeps the server's argv but takes its
    script's name (`train.py`)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            argv.append((proc / "comm").read_text().strip())
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        yield int(proc.name), argv, cwd
