"""Ray job entry point for incremental re-indexing (what the scheduled jobs in cluster/ run).

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/reindex.py s3://bucket/corpus/ s3://bucket/index/ --keep-generations 3

Takes exactly the options of `lsr reindex` (see `python jobs/reindex.py --help`).
"""

from __future__ import annotations

import os
import sys

# Under `ray job submit --working-dir .` the project is the working directory, not installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.cli import run  # noqa: E402

if __name__ == "__main__":
    sys.argv = ["jobs/reindex.py", "reindex", *sys.argv[1:]]
    run()
