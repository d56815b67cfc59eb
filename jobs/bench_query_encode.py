"""Benchmark of single-query encoding (`pipeline.encode.query.QueryFastPath.encode_one`).

splade-tiny, torch on one thread, the first N real scifact query texts, one query at a time:
p50/p99 of `encode_one` for each body (lean BERT / Hugging Face forward) and head (int8 or
bfloat16 screen with float32 on the candidates, or float32 over the whole vocabulary), the
batch encoder's `encode_queries([q])` for reference, and the stage split of the default
configuration measured per query: tokenize, body, screen (the upper bound of every term),
exact (float32 on the candidates), rest (log1p, ReLU, top-k/threshold, CSR row); then the int8
screen's two matmuls (oneDNN's prepacked one, `torch._int_mm`) in alternating passes; and
`encode_queries` on micro-batches (``--micro-batch``, 8: one stacked int8 screen per
batch) against `encode_one` on the same queries, alternating; and
with ``--baseline REV``, the default configuration of this tree against the query encoder of git
revision REV (its `pipeline/encode/query.py` and `lean_bert.py`, loaded beside this tree's), in
alternating passes on the same queries, so that a slow or fast spell of the machine hits both.

    flock /tmp/lsr-cpu.lock .venv/bin/python jobs/bench_query_encode.py \
        --out bench-results/query-encode-issue11.json [--baseline df762c5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values), q)), 3)


def timed(fn, items, repeat_warm: int = 20) -> list[float]:
    for item in items[:repeat_warm]:
        fn(item)
    out = []
    for item in items:
        t0 = time.perf_counter()
        fn(item)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def stage_split(fast, texts: list[str]) -> dict:
    """Per-query time of each stage of `encode_one` in the configuration in use (medians)."""
    import torch

    stages: dict[str, list[float]] = {k: [] for k in ("tokenize", "body", "screen", "exact",
                                                      "rest", "candidates")}
    for text in texts:
        t0 = time.perf_counter()
        ids = fast.token_ids(text)
        t1 = time.perf_counter()
        with torch.inference_mode():
            hidden = fast._hidden(ids)                                   # noqa: SLF001
            t2 = time.perf_counter()
            if fast.screen == "none":
                terms, top = fast._top_logits(hidden, "none")           # noqa: SLF001
                t3 = t4 = time.perf_counter()
                n = fast.vocab_size
            else:
                screen = fast._candidates_int8 if fast.screen == "int8" \
                    else fast._candidates_bf16                             # noqa: SLF001
                terms = screen(hidden)
                t3 = time.perf_counter()
                top = fast._exact_top(hidden, terms)                     # noqa: SLF001
                t4 = time.perf_counter()
                n = int(terms.numel())
            fast._finish(terms, top)                                     # noqa: SLF001
            t5 = time.perf_counter()
        for name, ms in (("tokenize", t1 - t0), ("body", t2 - t1), ("screen", t3 - t2),
                         ("exact", t4 - t3), ("rest", t5 - t4)):
            stages[name].append(ms * 1000)
        stages["candidates"].append(n)
    return {name: pct(v, 50) for name, v in stages.items()}


def int8_kernels(fast, texts: list[str], rounds: int) -> dict:
    """The int8 screen's two matmuls, oneDNN's prepacked one and `torch._int_mm`, in the
    default body: ``rounds`` alternating passes over the queries (so load changes hit both
    alike); p50/p99 of each over all its passes. Empty where oneDNN's does not run."""
    packed = fast.weight_i8_packed
    if packed is None or fast.screen != "int8" or rounds < 1:
        return {}
    times: dict[str, list[float]] = {"onednn": [], "int_mm": []}
    try:
        for _ in range(rounds):
            for name, kernel in (("onednn", packed), ("int_mm", None)):
                fast.weight_i8_packed = kernel
                times[name] += timed(fast.encode_one, texts)
    finally:
        fast.weight_i8_packed = packed
    return {name: {"p50_ms": pct(ms, 50), "p99_ms": pct(ms, 99)} for name, ms in times.items()}


def micro_batches(fast, texts: list[str], size: int, rounds: int) -> dict:
    """ms per query of `encode_queries` on consecutive batches of ``size`` (what a serving
    replica's micro-batcher hands it under load: one stacked int8 screen per batch) against
    `encode_one` on the same queries, ``rounds`` alternating passes (medians of the passes)."""
    batches = [texts[i:i + size] for i in range(0, len(texts), size)]
    passes: dict[str, list[float]] = {"one by one": [], f"batches of {size}": []}

    def one_by_one():
        for batch in batches:
            for text in batch:
                fast.encode_one(text)

    def batched():
        for batch in batches:
            fast.encode_queries(batch)

    runs = (("one by one", one_by_one), (f"batches of {size}", batched))
    for i in range(rounds):
        for name, run in runs if i % 2 == 0 else runs[::-1]:
            t0 = time.perf_counter()
            run()
            passes[name].append((time.perf_counter() - t0) / len(texts) * 1000)
    return {name: round(float(np.median(ms)), 3) for name, ms in passes.items()}


def load_baseline(revision: str, settings: dict):
    """The fast path of git revision ``revision`` (its query.py and lean_bert.py as modules of
    their own), built from ``settings``."""
    import importlib.util
    import subprocess
    import tempfile

    root = Path(__file__).resolve().parents[1]
    modules = {}
    with tempfile.TemporaryDirectory(prefix="lsr-baseline-") as folder:
        for name in ("query", "lean_bert"):
            source = subprocess.run(["git", "-C", str(root), "show",
                                     f"{revision}:pipeline/encode/{name}.py"],
                                    check=True, capture_output=True, text=True).stdout
            path = Path(folder) / f"baseline_{name}.py"
            path.write_text(source)
            spec = importlib.util.spec_from_file_location(f"baseline_{name}", path)
            modules[name] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(modules[name])
    fast = modules["query"].QueryFastPath.from_settings(settings, device="cpu")
    if fast.lean is not None:      # its own lean body, not this tree's
        fast.lean = modules["lean_bert"].LeanBert.from_model(fast.model)
    return fast


def against_baseline(fast, baseline, texts: list[str], rounds: int) -> dict:
    """p50/p99 of this tree's and the baseline's `encode_one`, ``rounds`` alternating passes
    (ABBA order), after checking that both give the same terms."""
    for text in texts:
        ours, theirs = fast.encode_one(text), baseline.encode_one(text)
        if ours[0].tolist() != theirs[0].tolist() or not np.allclose(ours[1], theirs[1],
                                                                        rtol=1e-4, atol=1e-5):
            raise SystemExit(f"the baseline encodes {text!r} differently")
    times: dict[str, list[float]] = {"this tree": [], "baseline": []}
    for i in range(rounds):
        order = (("this tree", fast), ("baseline", baseline))
        for name, encoder in order if i % 2 == 0 else order[::-1]:
            times[name] += timed(encoder.encode_one, texts)
    return {name: {"p50_ms": pct(ms, 50), "p99_ms": pct(ms, 99)} for name, ms in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=Path,
                        default=Path("/work/shared/data/scifact/queries.jsonl"))
    parser.add_argument("--n-queries", type=int, default=300)
    parser.add_argument("--model", default="splade-tiny")
    parser.add_argument("--int8-rounds", type=int, default=3,
                        help="Alternating passes of the int8 screen's two matmuls (0 = skip).")
    parser.add_argument("--micro-batch", type=int, default=8,
                        help="Also time encode_queries on batches of this size (0 = skip).")
    parser.add_argument("--baseline", default=None, metavar="REV",
                        help="Also time the query encoder of this git revision, alternating.")
    parser.add_argument("--baseline-rounds", type=int, default=6)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    from pipeline.encode import SpladeEncoder
    from pipeline.encode.query import QueryFastPath, set_torch_threads
    from pipeline.testing.machine import describe_machine

    set_torch_threads(1)
    with open(args.queries, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line, _ in zip(f, range(args.n_queries))]
    report = {"command": " ".join([sys.executable, *sys.argv]),
              "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
              "machine": describe_machine(), "load_avg_start": list(os.getloadavg()),
              "n_queries": len(texts), "torch_threads": torch.get_num_threads(), "runs": []}
    reference = SpladeEncoder(args.model, device="cpu")
    fast = QueryFastPath.from_settings(reference.settings(), device="cpu")
    report["default"] = {"body": "lean" if fast.lean is not None else "hf", "screen": fast.screen}
    lean, default_screen = fast.lean, fast.screen
    for body in ("lean", "hf"):
        if body == "lean" and lean is None:
            continue
        fast.lean = lean if body == "lean" else None
        for screen in QueryFastPath.SCREENS:
            fast.screen = screen
            ms = timed(fast.encode_one, texts)
            report["runs"].append({"body": body, "screen": screen, "p50_ms": pct(ms, 50),
                                   "p99_ms": pct(ms, 99), "mean_ms": round(float(np.mean(ms)), 3)})
            print(json.dumps(report["runs"][-1]), flush=True)
    ms = timed(lambda t: reference.encode_queries([t]), texts)
    report["runs"].append({"body": "SpladeEncoder.encode_queries([q])", "screen": "-",
                           "p50_ms": pct(ms, 50), "p99_ms": pct(ms, 99),
                           "mean_ms": round(float(np.mean(ms)), 3)})
    print(json.dumps(report["runs"][-1]), flush=True)
    fast.lean, fast.screen = lean, default_screen
    ms = timed(fast.encode_one, texts)          # the default again, after everything is warm
    report["default"].update({"p50_ms": pct(ms, 50), "p99_ms": pct(ms, 99)})
    report["stages_p50_ms"] = stage_split(fast, texts)
    report["int8_kernels"] = int8_kernels(fast, texts, args.int8_rounds)
    if args.micro_batch > 1:
        report["micro_batch_ms_per_query"] = micro_batches(fast, texts, args.micro_batch, 6)
    if args.baseline:
        report["baseline"] = {"revision": args.baseline, **against_baseline(
            fast, load_baseline(args.baseline, reference.settings()), texts,
            args.baseline_rounds)}
    report["load_avg_end"] = list(os.getloadavg())
    print(json.dumps({"default": report["default"], "stages_p50_ms": report["stages_p50_ms"],
                      "int8_kernels": report["int8_kernels"],
                      "micro_batch_ms_per_query": report.get("micro_batch_ms_per_query"),
                      "baseline": report.get("baseline"),
                      "load_avg": [report["load_avg_start"], report["load_avg_end"]]}))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
