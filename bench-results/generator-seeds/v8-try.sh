#!/bin/bash
# usage: try.sh NAME PARAMS   -> refit tables, run recall grid (LIBS, SEED env pass through)
cd /work/main
export NUMBA_NUM_THREADS=2
.venv/bin/python /tmp/gl/fitw.py "$2" 4 /tmp/gl/tables-$1.json | tail -3 | head -1
TABLES=/tmp/gl/tables-$1.json .venv/bin/python /tmp/gl/v8loop.py "$2" 2>&1 | grep -v "^    real\|^    synth"
