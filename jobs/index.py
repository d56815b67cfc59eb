"""Ray job entry point for the indexing job.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/index.py s3://bucket/corpus/ s3://bucket/index/ --shard-size 1000000

Takes exactly the options of `lsr index` (see `python jobs/index.py --help`).
"""

from __future__ import annotations

import os
import sys

# Under `ray job submit --working-dir .` the project is the working directory, not installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.cli import run  # noqa: E402

if __name__ == "__main__":
    sys.argv = ["jobs/index.py", "index", *sys.argv[1:]]
    run()
