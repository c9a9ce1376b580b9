"""The facts every benchmark states beside its figures: the machine, and which postroom."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from delivery_setup import BenchError

HERE = Path(__file__).resolve().parent


def postroom_command() -> list[str]:
    """The `postroom` console script of this venv (or on PATH)."""
    beside = Path(sys.executable).parent / "postroom"
    found = str(beside) if beside.exists() else shutil.which("postroom")
    if not found:
        raise BenchError("the `postroom` command is not installed: run `make .venv/.installed`")
    return [found]


def machine() -> str:
    return (f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), "
            f"{cpu_model()}, {memory()}")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB RAM"
    except OSError:
        pass
    return "RAM unknown"


def postroom_version(postroom: list[str]) -> str:
    """The version, and where the package comes from: which checkout and commit, if any."""
    version = command_output([*postroom, "--version"]) or "unknown version"
    package = Path(command_output([sys.executable, "-c",
                                   "import postroom; print(postroom.__file__)"])
                   or ".").resolve().parent
    source = HERE.parent / "src" / "postroom"
    # Another checkout (PYTHONPATH=/elsewhere/src, e.g. to measure a given commit) is named.
    checkout = str(HERE) if package == source else command_output(
        ["git", "-C", str(package), "rev-parse", "--show-toplevel"])
    if not checkout:
        return f"{version}, from {package}"
    commit = command_output(["git", "-C", checkout, "rev-parse", "--short", "HEAD"]) or "unknown"
    dirty = command_output(["git", "-C", checkout, "status", "--porcelain", "--", str(package)])
    where = "" if package == source else f" (checkout {checkout})"
    return (f"{version}, commit {commit}{where}"
            + (" + uncommitted changes in src/" if dirty else ""))


def command_output(argv: list[str]) -> str:
    """What the command prints on stdout, or "" if it fails."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot, all cores (/proc/stat).

    The difference over a run, less the run's own CPU time, is what everything else on the
    machine used meanwhile: a figure measured beside a busy neighbour is not a figure.
    """
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return 0.0
    # user nice system idle iowait irq softirq steal: all but idle and iowait are busy.
    ticks = [int(field) for field in first[1:9]]
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")
