"""lsr-pipeline: learned sparse retrieval (SPLADE) at cluster scale on Ray.

The public API is imported lazily so that `import pipeline` stays cheap for Ray workers
and the CLI (torch, numba and Ray load only when a name that needs them is used).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    # name: module that defines it
    "SpladeEncoder": "pipeline.encode",
    "ExactIndex": "pipeline.index",
    "BlockedIndex": "pipeline.index",
    "BlockedIndexConfig": "pipeline.index",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
