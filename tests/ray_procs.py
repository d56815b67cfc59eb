"""Processes the tests start and stop by PID: a subprocess with its own Ray, a `ray start --head`.

Never `ray stop` (it would kill every Ray on the machine): only what a test started goes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import httpx

from conftest import REPO, free_port

# The Ray CLI of the interpreter running the tests (its venv's bin need not be on PATH).
RAY_CLI = str(Path(sys.executable).with_name("ray")) if Path(sys.executable).with_name("ray").exists() \
    else shutil.which("ray") or "ray"


def subprocess_env(**extra: str) -> dict:
    """The environment of a subprocess: explicit Ray auth mode, offline model hub."""
    env = dict(os.environ, RAY_AUTH_MODE="disabled", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env.update(extra)
    return env


def descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout_s: float = 600.0) -> None:
    """SIGKILL `proc` and every process it started (its Ray included) once `ready()` holds.

    Fails if `proc` ends first or `ready()` never holds. Descendants are collected while
    waiting: Ray's processes may leave the process tree before the kill.
    """
    import psutil

    victims: set[int] = set()
    try:
        deadline = time.time() + timeout_s
        while not ready():
            victims.update(descendants(proc.pid))
            assert proc.poll() is None, "the process ended before it could be interrupted"
            assert time.time() < deadline, "the moment to interrupt never came"
            time.sleep(0.2)
    finally:
        victims.update(descendants(proc.pid))
        for pid in [proc.pid, *victims]:
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()
        proc.wait(timeout=60)


@contextlib.contextmanager
def ray_head(num_cpus: int = 2) -> Iterator[str]:
    """A `ray start --head` on 127.0.0.1 with a dashboard; yields its job-submission address."""
    import psutil

    gcs, dash = free_port(), free_port()
    # Every port of its own: the agents' defaults (52365...) may belong to another Ray here,
    # and a head whose job agent cannot bind accepts no job ("No available agent").
    ports = [f"--{name}={free_port()}" for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
        "metrics-export-port", "ray-client-server-port")]
    head = subprocess.Popen([RAY_CLI, "start", "--head", "--block", f"--port={gcs}", f"--num-cpus={num_cpus}",
                             "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
                             f"--dashboard-port={dash}", "--include-dashboard=true", *ports],
                            env=subprocess_env(RAY_ADDRESS=""), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, cwd=REPO)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{address}/api/version", timeout=2).status_code == 200:
                    break
            assert time.time() < deadline and head.poll() is None, "the head node did not come up"
            time.sleep(1)
        yield address
    finally:
        victims = [head.pid, *descendants(head.pid)]
        for pid in victims:
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).terminate()
        psutil.wait_procs([psutil.Process(p) for p in victims if psutil.pid_exists(p)], timeout=30)
        # `ray start` names itself the machine's current cluster; `ray stop` would remove that
        # note, killing by PID does not, and a later plain ray.init() would try to join the
        # dead head. Remove it when it still names this head.
        note = Path("/tmp/ray/ray_current_cluster")
        with contextlib.suppress(OSError):
            if note.read_text().strip().endswith(f":{gcs}"):
                note.unlink()


def submit_job(address: str, entrypoint: list[str], timeout_s: float = 1200.0) -> subprocess.CompletedProcess:
    """`ray job submit --working-dir REPO -- ENTRYPOINT`, waiting for the job; retried while the
    head's job agent is still starting ("No available agent")."""
    deadline = time.time() + 120
    while True:
        out = subprocess.run([RAY_CLI, "job", "submit", "--address", address, "--working-dir", str(REPO),
                              "--", *entrypoint], env=subprocess_env(RAY_ADDRESS=""),
                             capture_output=True, text=True, timeout=timeout_s)
        if out.returncode == 0 or "No available agent" not in out.stderr + out.stdout \
                or time.time() > deadline:
            return out
        time.sleep(3)
