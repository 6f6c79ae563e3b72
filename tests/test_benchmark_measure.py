"""The benchmarks' memory sampler: the kernel's peak (VmHWM) outlives the memory it counted, so a sparse
sample still reports a process's true peak; the tree is read from /proc, children of every thread."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from measure import process_tree, run_measured, status

# allocates and touches 200 MB, frees it, says so, then waits for its standard input to close
PEAK_THEN_WAIT = "import sys; block = bytearray(200 * 2**20); del block; print('freed', flush=True); sys.stdin.read()"


def test_the_peak_of_a_child_started_from_a_thread_is_kept_after_its_memory_is_freed() -> None:
    parent = (
        "import subprocess, sys, threading\n"
        f"child = lambda: subprocess.run([sys.executable, '-c', {PEAK_THEN_WAIT!r}])\n"
        "thread = threading.Thread(target=child); thread.start(); thread.join()\n"
    )
    process = subprocess.Popen([sys.executable, "-c", parent], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == b"freed"
        tree = process_tree(process.pid)
        assert tree[0] == process.pid and len(tree) == 2
        child = tree[1]
        read = status(child)
        assert read is not None
        name, peak = read
        resident = int(Path(f"/proc/{child}/statm").read_text().split()[1]) * 4096 / 2**20
        assert name.startswith("python") and peak >= 200 and resident < 100
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(timeout=30)
    assert status(process.pid) is None


def test_run_measured_labels_each_process_and_times_the_whole_command(tmp_path: Path) -> None:
    script = tmp_path / "allocate.py"
    # busy for a second: a sampler thread is sure to read it at least once (every 50 ms) after its allocation
    script.write_text("block = bytearray(120 * 2**20)\nimport time\ndeadline = time.monotonic() + 1\n"
                      "while time.monotonic() < deadline: pass\n")  # fmt: skip
    started = time.perf_counter()
    seconds, peaks = run_measured([sys.executable, str(script)], {}, tmp_path)
    assert 1 <= seconds <= time.perf_counter() - started
    assert peaks["allocate.py"] >= 120
