"""The embedded demo corpus: Python's own documentation, built on any machine without download.

Documents are the reference topics shipped with CPython (`pydoc_data.topics`) and the
docstrings of standard-library modules, classes and functions. Sources are parsed with
`ast`, never imported: importing some stdlib modules has side effects.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import logging
import sys
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

_SKIP_PREFIXES = ("_", "test", "idlelib", "lib2to3", "ensurepip", "turtledemo", "this", "antigravity")


def _docstring_records(module: str) -> Iterator[dict]:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return
    try:
        tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return
    doc = ast.get_docstring(tree)
    if doc and len(doc) > 80:
        yield {"_id": f"module:{module}", "title": f"{module} module", "text": doc}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) \
                and not node.name.startswith("_"):
            doc = ast.get_docstring(node)
            if doc and len(doc) > 120:
                kind = "class" if isinstance(node, ast.ClassDef) else "function"
                yield {"_id": f"{kind}:{module}.{node.name}", "title": f"{module}.{node.name}",
                       "text": doc}


def demo_records(max_docs: int | None = None) -> list[dict]:
    """The demo corpus as BEIR-style records, in a stable order."""
    from pydoc_data.topics import topics

    records = [{"_id": f"topic:{name}", "title": f"Python reference: {name}", "text": text.strip()}
               for name, text in sorted(topics.items()) if text.strip()]
    for module in sorted(sys.stdlib_module_names):
        if module.startswith(_SKIP_PREFIXES):
            continue
        records.extend(_docstring_records(module))
    if max_docs is not None:
        records = records[:max_docs]
    return records


def write_demo_corpus(path: str | Path, max_docs: int | None = None) -> int:
    """Write the demo corpus as JSONL; returns the number of documents."""
    records = demo_records(max_docs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    log.info("wrote %d demo documents to %s", len(records), path)
    return len(records)
