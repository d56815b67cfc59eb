"""Write an inference-free SPLADE model: a document model plus BM25-IDF query weights from a corpus.

    python jobs/make_inference_free.py CORPUS_DIR OUT_DIR [--model splade-tiny] [--layout sentence-transformers]

CORPUS_DIR holds a BEIR corpus.jsonl; document text is title + " " + text (the indexing default).
OUT_DIR is then usable as `--model OUT_DIR` by `lsr index`, `lsr evaluate`, `lsr search`:
documents through the document model, queries through the IDF table (no network at query time).
See `pipeline.encode.inference_free` for the layouts and the IDF formula.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> int:
    from pipeline.data.records import parse_record
    from pipeline.encode.inference_free import LAYOUTS, write_inference_free_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", help="BEIR folder with corpus.jsonl (the IDF corpus)")
    parser.add_argument("out", help="directory to write (must not exist)")
    parser.add_argument("--model", default="splade-tiny", help="document model: alias or masked-LM directory")
    parser.add_argument("--layout", default="sentence-transformers", choices=LAYOUTS)
    parser.add_argument("--activation", default="relu", choices=("relu", "log1p_relu"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def texts():
        with open(os.path.join(args.corpus, "corpus.jsonl"), encoding="utf-8") as f:
            for position, line in enumerate(f):
                yield parse_record(json.loads(line), source="corpus.jsonl", position=position)[1]

    write_inference_free_model(args.model, texts(), args.out, layout=args.layout, activation=args.activation)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
