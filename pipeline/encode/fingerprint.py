"""Content fingerprint of a model: which exact weights and vocabulary produced a set of vectors.

sha256 over config.json, the weight files and the tokenizer files (the vocabulary decides what
each dimension means), each framed by its name and size, in name order. Two indexes whose
fingerprints differ hold vectors that must not be mixed.

sentence-transformers directories add their module files: modules.json, the pooling and router
configurations, the sub-folders the modules live in (named by their relative path), and an
idf.json query table. A plain Hugging Face folder hashes exactly as before.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os

#: Files that decide the vectors. Weights: safetensors or PyTorch bins, sharded or not.
FINGERPRINT_PATTERNS: tuple[str, ...] = (
    "config.json",
    "*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model.bin.index.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
    "merges.txt", "*.model",
    # sentence-transformers and inference-free query encoders
    "modules.json", "config_sentence_transformers.json", "sentence_bert_config.json", "router_config.json",
    "idf.json",
)
_CHUNK = 1 << 20


def _covered(folder: str, prefix: str = "") -> list[str]:
    return [prefix + n for n in os.listdir(folder)
            if os.path.isfile(os.path.join(folder, n)) and any(fnmatch.fnmatch(n, p) for p in FINGERPRINT_PATTERNS)]


def model_files(folder: str) -> list[str]:
    """Names (sorted; sub-folder files as 'sub/name') of the files in `folder` that the fingerprint covers."""
    names = _covered(folder)
    if "modules.json" in names:
        from pipeline.encode.layouts import read_layout

        for sub in read_layout(folder).module_folders:
            if os.path.isdir(os.path.join(folder, sub)):
                names += _covered(os.path.join(folder, sub), sub.replace(os.sep, "/") + "/")
    names = sorted(set(names))
    if "config.json" not in names and "modules.json" not in names:
        raise FileNotFoundError(f"no config.json in {folder}")
    if not any(fnmatch.fnmatch(n.rsplit("/", 1)[-1], p) for n in names for p in ("*.safetensors", "pytorch_model*.bin")):
        raise FileNotFoundError(f"no weight file (*.safetensors, pytorch_model*.bin) in {folder}")
    return names


def fingerprint_folder(folder: str) -> str:
    """'sha256:<hex>' of the model files in a local folder."""
    digest = hashlib.sha256()
    for name in model_files(folder):
        path = os.path.join(folder, name)
        digest.update(f"{name}\0{os.path.getsize(path)}\0".encode())
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def local_model_folder(source: str) -> str:
    """The folder holding a model's files: `source` itself, or the hub cache snapshot of a hub id."""
    if os.path.isdir(source):
        return source
    from transformers.utils import cached_file

    config = cached_file(source, "config.json", local_files_only=True)
    if config is None:
        raise FileNotFoundError(f"model {source!r} is not in the local Hugging Face cache")
    return os.path.dirname(config)


def model_fingerprint(source: str) -> str:
    """Fingerprint of a model given as a local folder or a (cached) hub id."""
    return fingerprint_folder(local_model_folder(source))
