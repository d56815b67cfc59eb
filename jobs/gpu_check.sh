#!/usr/bin/env bash
# One device call: the GPU checks and benchmarks of the fused SPLADE head and the encoder, in
# priority order (issue 16). Run by the `device` tool on a lent H200 (its image's python3: torch,
# triton, transformers; no ray):
#   here:  bash jobs/gpu_prepare.sh   (makes .gpu: the splade-tiny model folder as
#          .gpu/site/cognition/model, the first 2,048 scifact documents as .gpu/data/scifact/corpus.jsonl)
#   there: bash jobs/gpu_check.sh, carrying .gpu, with timeout_s 600
# Each step has its own time limit and writes its log under $OUT; a failed step does not stop the
# rest. About 8 minutes on an H200 (2026-12-04: the first four steps took 5.5 minutes). The limits
# add up to more than one call's 600 s, so the steps run in priority order, the profile last.
set -u
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD:$PWD/.gpu/site" PYTHONUNBUFFERED=1 LSR_DATA_DIR="$PWD/.gpu/data" HF_HUB_OFFLINE=1
PY=python3
DATA=.gpu/data/scifact
step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2; shift 2
    echo "=== $name ($(date -u +%H:%M:%S), limit ${limit}s): $*"
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    echo "=== $name exit $?"
    tail -n 25 "$OUT/$name.txt"
}
{ nvidia-smi; $PY -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)"; } > "$OUT/env.txt" 2>&1
tail -n 3 "$OUT/env.txt"
step ceilings 45 $PY jobs/gpu_ceilings.py
step kernel-tests 180 $PY -m pytest tests/test_kernels.py -m gpu -q -p no:cacheprovider
step head 210 $PY jobs/bench_head.py --device cuda --dtype bfloat16 --repeats 10 \
    --shapes 32,256,30522,128 32,256,30522,768 128,512,30522,768 32,256,250002,1024 128,512,250002,1024
step encoder-tiny 90 $PY jobs/bench_head.py --device cuda --shapes none --encoder 2048 --batch-size 128 --data $DATA
step encoder-base 120 $PY jobs/bench_head.py --device cuda --shapes none --encoder 1024 --batch-size 64 \
    --model bert-base-random --data $DATA
step encoder-tests 60 $PY -m pytest tests/test_encoder.py -m gpu -q -p no:cacheprovider
step ncu 90 ncu --clock-control none -k regex:_splade_max_kernel --launch-count 1 \
    --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
    $PY jobs/gpu_tiles.py --shape 128,512,30522,768 --only 128,256,64,8,3
echo "=== done $(date -u +%H:%M:%S)"
