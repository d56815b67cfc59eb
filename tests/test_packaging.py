"""The project's top-level packages share no import name with another installed distribution.

A top-level `kernels` package once shadowed Hugging Face's `kernels`, which transformers >= 5.25
installs and imports while loading any model: every encoder failed to load. These tests fail if
any of our import names is claimed by another distribution, or if transformers cannot load its
model code with the repository first on `sys.path` (as under pytest, Ray's working_dir, `python -c`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys
import tomllib

import pytest

from conftest import REPO

OUR_DISTRIBUTION = "lsr-pipeline"


def _our_top_level_packages() -> list[str]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["packages"]["find"]["include"]
    return sorted(p.rstrip("*").rstrip(".") for p in patterns)


@pytest.mark.parametrize("name", _our_top_level_packages())
def test_no_other_distribution_ships_our_import_names(name):
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin and spec.origin.startswith(str(REPO)), (name, spec)
    claimants = importlib.metadata.packages_distributions().get(name, [])
    others = sorted({d for d in claimants if d.lower().replace("_", "-") != OUR_DISTRIBUTION})
    assert not others, f"import name {name!r} is also shipped by {others}"


def test_transformers_loads_model_code_with_the_repository_first_on_the_path():
    # `transformers.activations` imports the hub-kernels integration, which imports `kernels`
    # when Hugging Face's package is installed; the BERT module is what splade-tiny loads.
    code = "import transformers.activations, transformers.models.bert.modeling_bert"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
