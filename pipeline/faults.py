"""Named fault points for crash tests: `LSR_FAULT=<name>` makes the process SIGKILL itself
when it reaches the point of that name. Imports nothing from the packages.

A point reached inside a Ray worker also kills the job's driver (its pid is in
`LSR_DRIVER_PID`, set by the job before Ray starts), so the whole run dies there as it would
if the machine went away. Unset (the normal case), `fault_point` is a dictionary lookup.

Points (the README's "Crashes" section says what each leaves behind):
    stage:after-part            a write task staged one part
    commit:mid-postings         a shard's postings arrays written, its attributes not
    commit:mid-index-save       a shard's index group half written
    commit:after-index-save     postings and index written, COMMITTED.json not
    commit:before-manifest      every shard committed, no manifest
    commit:before-current       manifest written, CURRENT not moved
    gc:mid                      garbage collection deleted manifests, not yet shards
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = "LSR_FAULT"
DRIVER_PID_ENV = "LSR_DRIVER_PID"
POINTS = ("stage:after-part", "commit:mid-postings", "commit:mid-index-save",
          "commit:after-index-save", "commit:before-manifest", "commit:before-current", "gc:mid")


def armed(name: str) -> bool:
    return os.environ.get(FAULT_ENV) == name


def fault_point(name: str) -> None:
    """SIGKILL this process (and the job's driver) if `LSR_FAULT` names this point."""
    if not armed(name):
        return
    driver = os.environ.get(DRIVER_PID_ENV)
    if driver and driver.isdigit() and int(driver) != os.getpid():
        try:
            os.kill(int(driver), signal.SIGKILL)
        except ProcessLookupError:
            pass
    os.kill(os.getpid(), signal.SIGKILL)
