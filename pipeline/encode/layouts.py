"""Which model layout a directory holds, and what each route (document, query) is made of.

Layouts read (nothing here loads weights; `pipeline.encode.encoder` does):

- "masked-lm": a Hugging Face masked-LM directory (config.json, weights, tokenizer); the
  naver/splade head (max pooling, log1p(relu)) unless pooling/activation are given.
- "causal-lm": the same for a decoder-only LM (config.json `architectures` ending in
  "ForCausalLM", e.g. Mistral or Llama): the LM head's logits through the same head.
- "idf-json": a masked-LM (or causal-LM) document model with an `idf.json` token -> weight table
  beside it (OpenSearch's doc-only models): documents through the neural head, queries
  inference-free through the table.
- "sentence-transformers": a sentence-transformers SparseEncoder directory (`modules.json`):
  MLMTransformer/Transformer + SpladePooling (pooling_strategy, activation_function read from
  the pooling folder's config.json), optionally `max_active_dims` in
  config_sentence_transformers.json; or a Router (router_config.json) with separate "query" and
  "document" routes, either of which may be a SparseStaticEmbedding (inference-free).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from pipeline.errors import UserError


class UnsupportedLayout(UserError, ValueError):
    """The directory's sentence-transformers modules are not ones this pipeline can run."""


@dataclass(frozen=True)
class NeuralRoute:
    """A transformer whose vocabulary logits go through the SPLADE head."""

    folder: str                    # the Hugging Face model folder (config.json, weights, tokenizer)
    architecture: str              # "masked-lm" or "causal-lm"
    pooling: str = "max"           # "max" or "sum"
    activation: str = "relu"       # "relu" (log1p(relu)) or "log1p_relu" (log1p(log1p(relu)))
    max_seq_length: int | None = None   # sentence-transformers' limit, when it sets one
    do_lower_case: bool = False


@dataclass(frozen=True)
class StaticRoute:
    """An inference-free query encoder: binary token presence times one weight per vocabulary entry."""

    tokenizer_folder: str
    weights_file: str              # model.safetensors ("weight", shape (V,)) or an idf.json table
    name: str                      # what the manifest records: "idf.json" or the module folder name


@dataclass(frozen=True)
class ModelLayout:
    kind: str                      # "masked-lm", "causal-lm", "idf-json", "sentence-transformers"
    document: NeuralRoute
    query: NeuralRoute | StaticRoute   # the document route itself when the model is symmetric
    max_active_dims: int | None = None
    module_folders: tuple[str, ...] = ()   # sub-folders holding module files (for the fingerprint)

    @property
    def inference_free(self) -> bool:
        return isinstance(self.query, StaticRoute)


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise UnsupportedLayout(f"cannot read {path}: {exc}") from None


def hf_architecture(folder: str) -> str:
    """The architecture family: causal-lm when config.json names a *ForCausalLM class, else masked-lm."""
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise UnsupportedLayout(f"{folder} holds no config.json (not a Hugging Face model folder)")
    architectures = _read_json(path).get("architectures") or []
    return "causal-lm" if any(str(a).endswith("ForCausalLM") for a in architectures) else "masked-lm"


def read_layout(root: str) -> ModelLayout:
    """The layout of a local model directory (see the module docstring)."""
    if os.path.isfile(os.path.join(root, "modules.json")):
        return _sentence_transformers_layout(root)
    architecture = hf_architecture(root)
    document = NeuralRoute(root, architecture)
    idf = os.path.join(root, "idf.json")
    if os.path.isfile(idf):
        return ModelLayout("idf-json", document, StaticRoute(root, idf, "idf.json"))
    return ModelLayout(architecture, document, document)


# ------------------------------------------------------------------------------ sentence-transformers

def _kind(module_type: str) -> str:
    """Module class name from its dotted type ("sentence_transformers.sparse_encoder.models.SpladePooling")."""
    return str(module_type).rsplit(".", 1)[-1]


def _sentence_transformers_layout(root: str) -> ModelLayout:
    modules = sorted(_read_json(os.path.join(root, "modules.json")), key=lambda m: m.get("idx", 0))
    if not modules:
        raise UnsupportedLayout(f"{root}/modules.json lists no modules")
    st_config_path = os.path.join(root, "config_sentence_transformers.json")
    st_config = _read_json(st_config_path) if os.path.isfile(st_config_path) else {}
    max_active_dims = st_config.get("max_active_dims")
    if max_active_dims is not None and (not isinstance(max_active_dims, int) or isinstance(max_active_dims, bool)
                                        or max_active_dims < 1):
        raise UnsupportedLayout(f"{st_config_path}: max_active_dims must be a positive integer, "
                                f"got {max_active_dims!r}")
    folders = [m.get("path", "") for m in modules if m.get("path")]
    if len(modules) == 1 and _kind(modules[0]["type"]) == "Router":
        router_dir = os.path.join(root, modules[0].get("path", ""))
        config = _read_json(os.path.join(router_dir, "router_config.json"))
        types, structure = config.get("types", {}), config.get("structure", {})
        missing = {"query", "document"} - set(structure)
        if missing:
            raise UnsupportedLayout(f"{router_dir}/router_config.json has no {sorted(missing)} route "
                                    f"(routes: {sorted(structure)})")
        routes = {}
        for name in ("query", "document"):
            routes[name] = _route(root, [(types[i], os.path.join(router_dir, i)) for i in structure[name]],
                                  f"router route {name!r}")
        folders += [os.path.relpath(os.path.join(router_dir, i), root) for i in types]
        document, query = routes["document"], routes["query"]
    else:
        document = _route(root, [(m["type"], os.path.join(root, m.get("path", ""))) for m in modules], "modules.json")
        query = document
    if not isinstance(document, NeuralRoute):
        raise UnsupportedLayout(f"{root}: the document route is {type(document).__name__}; documents need "
                                "a transformer with SpladePooling")
    return ModelLayout("sentence-transformers", document, query, max_active_dims,
                       tuple(sorted({os.path.normpath(f) for f in folders if os.path.normpath(f) != "."})))


def _route(root: str, modules: list[tuple[str, str]], where: str) -> NeuralRoute | StaticRoute:
    kinds = [_kind(t) for t, _ in modules]
    if kinds == ["SparseStaticEmbedding"]:
        return _static_route(root, modules[0][1])
    if len(kinds) == 2 and kinds[0] in ("MLMTransformer", "Transformer") and kinds[1] == "SpladePooling":
        folder, pooling_dir = modules[0][1], modules[1][1]
        bert = os.path.join(folder, "sentence_bert_config.json")
        bert_config = _read_json(bert) if os.path.isfile(bert) else {}
        task = bert_config.get("transformer_task")
        if kinds[0] == "Transformer" and task not in (None, "fill-mask", "text-generation"):
            raise UnsupportedLayout(f"{folder}: Transformer with transformer_task={task!r}; SPLADE needs "
                                    "'fill-mask' (vocabulary logits)")
        pooling = _read_json(os.path.join(pooling_dir, "config.json")) \
            if os.path.isfile(os.path.join(pooling_dir, "config.json")) else {}
        strategy = pooling.get("pooling_strategy", "max")
        activation = pooling.get("activation_function", "relu")
        if strategy not in ("max", "sum"):
            raise UnsupportedLayout(f"{pooling_dir}: pooling_strategy {strategy!r} is not 'max' or 'sum'")
        if activation not in ("relu", "log1p_relu"):
            raise UnsupportedLayout(f"{pooling_dir}: activation_function {activation!r} is not "
                                    "'relu' or 'log1p_relu'")
        limit = bert_config.get("max_seq_length")
        return NeuralRoute(os.path.normpath(folder), hf_architecture(folder), strategy, activation,
                           int(limit) if isinstance(limit, int) else None,
                           bool(bert_config.get("do_lower_case", False)))
    raise UnsupportedLayout(
        f"{root} ({where}): modules {kinds} are not supported; a route must be "
        "[MLMTransformer or Transformer, SpladePooling] or [SparseStaticEmbedding]")


def _static_route(root: str, folder: str) -> StaticRoute:
    config_path = os.path.join(folder, "config.json")
    config = _read_json(config_path) if os.path.isfile(config_path) else {}
    path = config.get("path")
    name = os.path.relpath(folder, root)
    if isinstance(path, str) and path.endswith(".json"):
        # sentence-transformers reads the table from this path (or a hub repository's idf.json)
        for candidate in (os.path.join(folder, path), os.path.join(root, path), os.path.join(folder, "idf.json"),
                          os.path.join(root, "idf.json")):
            if os.path.isfile(candidate):
                return StaticRoute(os.path.normpath(folder), os.path.normpath(candidate), name)
        raise UnsupportedLayout(f"{config_path}: idf table {path!r} not found locally")
    weights = os.path.join(folder, "model.safetensors")
    if not os.path.isfile(weights):
        raise UnsupportedLayout(f"{folder}: SparseStaticEmbedding without model.safetensors "
                                "(pytorch_model.bin is not read; re-save with safetensors)")
    return StaticRoute(os.path.normpath(folder), weights, name)
