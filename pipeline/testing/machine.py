"""What a benchmark ran on: one description shared by every script under ``jobs/``.

A benchmark number means little without the machine, the load it shared the machine with and
the library versions; every benchmark prints `machine_line()` and stores `describe_machine()`.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

_LIBRARIES = ("torch", "triton", "numpy", "scipy", "numba", "ray", "zarr", "pyseismic-lsr")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return f"{props.name} x{torch.cuda.device_count()}, {props.total_memory / 2**30:.0f} GiB"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=False, capture_output=True,
                             text=True, cwd=Path(__file__).resolve().parents[1], timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries whose speed the benchmarks measure."""
    versions = {}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def describe_machine() -> dict:
    """CPU, cores, memory, GPU, load average at the time of the call, Python, libraries, commit."""
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "memory_gib": round(mem_gib, 1),
            "gpu": _gpu(), "load_avg": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(), "platform": platform.platform(),
            "libraries": library_versions(), "git": _git_commit()}


def machine_line(info: dict | None = None) -> str:
    """One line for a benchmark's header, e.g. ``AMD EPYC, 2 CPUs, 24 GiB, no GPU, load 1.2``."""
    info = info or describe_machine()
    gpu = f"GPU {info['gpu']}" if info["gpu"] else "no GPU"
    libs = ", ".join(f"{k} {v}" for k, v in info["libraries"].items())
    return (f"{info['cpu']}, {info['cores']} CPUs, {info['memory_gib']:.0f} GiB, {gpu}, "
            f"1-min load {info['load_avg'][0]:.1f}; Python {info['python']}; {libs}; "
            f"commit {info['git'] or 'unknown'}")
