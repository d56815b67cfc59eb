"""The timing headers of ``POST /search`` responses: their wire format and its parser.

``Server-Timing: name;dur=MS, ...`` carries the stages the ingress measured (milliseconds,
`pipeline.serve.ingress`). With ``LSR_SERVE_TRACE=1`` (`TRACE_ENV`) in the replica's
environment, ``X-LSR-Clock: arrived=S;done=S`` carries the replica's `time.perf_counter`
(CLOCK_MONOTONIC, one clock for every process of a Linux host) at the request's arrival in
the app and at the handler's end, so a client on the same host can split the time outside
the app (`jobs/bench_serve.py`).
"""

from __future__ import annotations

TRACE_ENV = "LSR_SERVE_TRACE"
CLOCK_HEADER = "X-LSR-Clock"


def server_timing(stages: dict[str, float]) -> str:
    """The Server-Timing value of stage durations given in seconds."""
    return ", ".join(f"{name};dur={seconds * 1000:.3f}" for name, seconds in stages.items())


def parse_server_timing(value: str) -> dict[str, float]:
    """Stage -> milliseconds of a Server-Timing value (entries without ``dur`` are skipped)."""
    out = {}
    for part in value.split(","):
        name, sep, ms = part.strip().partition(";dur=")
        if sep:
            out[name] = float(ms)
    return out


def clock(arrived: float, done: float) -> str:
    """The X-LSR-Clock value."""
    return f"arrived={arrived:.6f};done={done:.6f}"


def parse_clock(value: str) -> tuple[float, float] | None:
    """(arrived, done) of an X-LSR-Clock value; None when absent or incomplete."""
    fields = dict(kv.split("=", 1) for kv in value.split(";") if "=" in kv)
    if "arrived" not in fields or "done" not in fields:
        return None
    return float(fields["arrived"]), float(fields["done"])
