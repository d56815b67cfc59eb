"""Where a SPLADE model comes from: an alias, a local directory, or a Hugging Face hub id.

A local directory is a Hugging Face model folder (config.json) or a sentence-transformers
SparseEncoder folder (modules.json); `pipeline.encode.layouts` tells the layouts apart.
"""

from __future__ import annotations

import importlib.util
import os

from pipeline.errors import UserError

# Aliases for models shipped inside Python packages: alias -> (package, subdirectory, extra).
MODEL_ALIASES: dict[str, tuple[str, str, str]] = {
    "splade-tiny": ("cognition", "model", "tiny"),
}


class ModelNotFound(UserError, LookupError):
    """The model name is neither an installed alias, a local directory, nor a reachable hub id."""


def resolve_model(name: str) -> str:
    """Return what `from_pretrained` should load: a local directory or a hub id.

    Aliases are looked up without importing their package (the `cognition` package's
    import runs code we do not need).
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"model must be a non-empty string, got {name!r}")
    if name in MODEL_ALIASES:
        package, subdir, extra = MODEL_ALIASES[name]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelNotFound(
                f"model alias {name!r} needs the package {package!r}: "
                f"pip install 'lsr-pipeline[{extra}]'")
        path = os.path.join(list(spec.submodule_search_locations)[0], subdir)
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ModelNotFound(f"model alias {name!r}: no config.json under {path}")
        return path
    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        if not any(os.path.isfile(os.path.join(expanded, f)) for f in ("config.json", "modules.json")):
            raise ModelNotFound(f"{expanded} is a directory but holds no config.json (Hugging Face) "
                                "or modules.json (sentence-transformers)")
        return os.path.abspath(expanded)
    if name.startswith((".", "/", "~")):
        raise ModelNotFound(f"model directory {name!r} does not exist")
    return name  # a hub id; from_pretrained reports if it cannot be fetched
