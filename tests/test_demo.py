"""`make demo` as the README tells a new user to run it: the job script indexes the embedded
demo corpus on the embedded default and prints each query's expansion terms and hits."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO


def test_demo_indexes_searches_and_names_expansion_terms(tmp_path):
    env = dict(os.environ, RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run([sys.executable, str(REPO / "jobs" / "demo.py"), "--output", str(tmp_path / "demo"),
                           "--max-docs", "40"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "Indexed 40 documents" in out, out
    assert out.count("\nquery: ") == 5, out
    # expansion terms are vocabulary tokens with weights, not term ids
    expansions = [line for line in out.splitlines() if line.strip().startswith("expansion:")]
    assert len(expansions) == 5
    first_term = expansions[0].split(":", 1)[1].split(",")[0].split()[0]
    assert not first_term.isdigit(), expansions[0]
    assert "ms per query" in out
