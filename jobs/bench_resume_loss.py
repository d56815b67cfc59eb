"""How much a killed indexing run loses: kill `lsr index` once a share of the corpus is staged,
then resume it with the same command.

    python jobs/bench_resume_loss.py [--corpus ../shared/data/scifact] [--block-rows 500]
                                     [--kill-at 0.6] [--json]

Reports the rows staged when the run was killed, the rows a resume keeps (the unit of resume
is the staged part, one encoder batch) and the rows the former rule kept (whole read blocks
only), the documents the resumed run encoded again, and its wall time. Kills by PID the run
and every process it started. Prints the command, the machine and the date.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.testing.machine import machine_line


def staged(root: Path) -> list[tuple[int, int, int, int]]:
    from pipeline.batch.staging import parse_part_name

    out = []
    for path in root.glob("staging/*/parts/*/*.parquet"):
        parsed = parse_part_name(path.name)
        if parsed:
            out.append((int(path.parent.name[1:]), *parsed))
    return out


def main() -> None:
    default_corpus = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "scifact")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=os.path.normpath(default_corpus))
    parser.add_argument("--block-rows", type=int, default=500)
    parser.add_argument("--shard-size", type=int, default=2000)
    parser.add_argument("--kill-at", type=float, default=0.6)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import psutil

    from pipeline.batch.staging import sort_parts

    corpus_file = Path(args.corpus) / "corpus.jsonl" if Path(args.corpus).is_dir() else Path(args.corpus)
    total = sum(1 for line in open(corpus_file, "rb") if line.strip())
    root = Path(tempfile.mkdtemp(prefix="bench-resume-loss-")) / "idx"
    env = dict(os.environ, RAY_AUTH_MODE="disabled", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env.pop("LSR_DRIVER_PID", None)
    cmd = [sys.executable, "-m", "pipeline.cli", "index", args.corpus, str(root), "--block-rows",
           str(args.block_rows), "--shard-size", str(args.shard_size), "--index-kind", "exact", "--json"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    victims: set[int] = set()
    while sum(p[3] for p in staged(root)) < args.kill_at * total:
        victims.update(c.pid for c in psutil.Process(proc.pid).children(recursive=True))
        assert proc.poll() is None, "the run ended before the kill point"
        time.sleep(0.2)
    victims.update(c.pid for c in psutil.Process(proc.pid).children(recursive=True))
    for pid in [proc.pid, *victims]:
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).kill()
    proc.wait()
    parts = staged(root)
    rows_staged = sum(p[3] for p in parts)
    # Former rule: a read block counted only when its parts held all its rows.
    by_unit: dict[int, list[str]] = {}
    for unit, seq, first, n in parts:
        by_unit.setdefault(unit, []).append(f"b{seq:06d}-r{first:010d}-n{n}.parquet")
    kept_new = kept_old = 0
    for unit, names in by_unit.items():
        kept, _ = sort_parts(names)
        per_block: dict[int, int] = {}
        for (seq, _, n), _ in kept:
            per_block[seq] = per_block.get(seq, 0) + n
        kept_new += sum(per_block.values())
        unit_rows = min(args.shard_size, total - unit * args.shard_size)   # BEIR: no bad records
        for seq, rows in per_block.items():
            if rows == min(args.block_rows, unit_rows - seq * args.block_rows):
                kept_old += rows
    started = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    resume_s = time.perf_counter() - started
    summary = json.loads(out.stdout)
    result = {"corpus": args.corpus, "docs": total, "block_rows": args.block_rows, "kill_at": args.kill_at,
              "rows_staged_at_kill": rows_staged, "rows_kept_part_resume": kept_new,
              "rows_kept_block_resume_former": kept_old,
              "docs_encoded_by_resume": summary["stages"]["encode"]["rows"],
              "resume_wall_s": round(resume_s, 1), "resumed": summary["resumed"],
              "docs_indexed": summary["docs_indexed"],
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join([os.path.basename(sys.executable), *sys.argv]), "machine": machine_line()}
    shutil.rmtree(root.parent, ignore_errors=True)
    print(json.dumps(result, indent=2) if args.json else "\n".join(f"{k:<30} {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
