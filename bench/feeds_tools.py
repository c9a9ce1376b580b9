"""The reference tools of bench/feeds.py, installed when missing, and their versions.

Debian packages (installed with apt-get when running as root): hugo, nginx-light, wrk.
PyPI: pelican with Markdown, in its own venv under bench/.cache/ (never in postroom's).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from delivery_setup import BenchError

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
PELICAN_VENV = CACHE / "pelican-venv"
PELICAN_REQUIREMENT = "pelican[markdown]==4.12.0"
# Debian package → the command it provides.
DEBIAN_TOOLS = {"hugo": "hugo", "nginx-light": "nginx", "wrk": "wrk"}
SBIN = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")


def tool_path(command: str) -> str | None:
    """Where `command` is: on PATH, or in an sbin folder (nginx is in /usr/sbin)."""
    found = shutil.which(command)
    if found:
        return found
    for folder in SBIN:
        candidate = Path(folder) / command
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def ensure_debian_tools(packages: list[str], wait_seconds: float = 900.0) -> dict[str, str]:
    """Given Debian package names, install those whose command is missing; return the paths."""
    missing = [p for p in packages if tool_path(DEBIAN_TOOLS[p]) is None]
    if missing:
        _install(missing, wait_seconds)
    paths = {}
    for package in packages:
        found = tool_path(DEBIAN_TOOLS[package])
        if found is None:
            raise BenchError(f"the Debian package '{package}' is installed but "
                             f"`{DEBIAN_TOOLS[package]}` is still missing")
        paths[package] = found
    return paths


def _install(packages: list[str], wait_seconds: float) -> None:
    if os.geteuid() != 0:
        raise BenchError(f"missing: {', '.join(packages)}; install them (apt-get install "
                         f"--no-install-recommends {' '.join(packages)}) or run as root")
    if _apt_running():
        print(f"waiting for a running apt/dpkg to finish (up to {wait_seconds:.0f} s)...",
              flush=True)
        deadline = time.monotonic() + wait_seconds
        while _apt_running() and time.monotonic() < deadline:
            time.sleep(2.0)
    print(f"installing the Debian packages {', '.join(packages)}...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends",
               "-o", "DPkg::Lock::Timeout=600", *packages]
    if subprocess.run(install, timeout=1800, env=env).returncode == 0:
        return
    subprocess.run(["apt-get", "update", "-q"], check=False, timeout=900, env=env)
    if subprocess.run(install, timeout=1800, env=env).returncode != 0:
        raise BenchError(f"could not install the Debian packages {', '.join(packages)}")


def _apt_running() -> bool:
    names = {"apt", "apt-get", "dpkg", "unattended-upgr"}
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if comm.read_text().strip() in names:
                return True
    return False


def ensure_pelican() -> str:
    """Return the `pelican` command of bench/.cache/pelican-venv, creating the venv if needed."""
    command = PELICAN_VENV / "bin" / "pelican"
    marker = PELICAN_VENV / ".installed"
    if command.exists() and marker.exists() and marker.read_text() == PELICAN_REQUIREMENT:
        return str(command)
    print(f"installing {PELICAN_REQUIREMENT} into {PELICAN_VENV}...", flush=True)
    shutil.rmtree(PELICAN_VENV, ignore_errors=True)
    CACHE.mkdir(exist_ok=True)
    steps = [[sys.executable, "-m", "venv", str(PELICAN_VENV)],
             [str(PELICAN_VENV / "bin" / "pip"), "install", "-q",
              "--disable-pip-version-check", PELICAN_REQUIREMENT]]
    for step in steps:
        if subprocess.run(step, timeout=900).returncode != 0:
            raise BenchError(f"could not install {PELICAN_REQUIREMENT}: {' '.join(step)} failed")
    marker.write_text(PELICAN_REQUIREMENT)
    return str(command)


def version_of(argv: list[str]) -> str:
    """The first line a `--version`-style command prints (on stdout or stderr)."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    lines = (done.stdout.strip() or done.stderr.strip()).splitlines()
    return lines[0].strip() if lines else "unknown"
