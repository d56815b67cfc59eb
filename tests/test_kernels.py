"""Fused SPLADE head: CPU twin, Triton kernel (interpreter, ahead-of-time sm_90 build, GPU), dispatcher.

Every implementation is checked against the plain naver/splade expression
(`pipeline.encode.reference.splade_head_reference`) on fresh random inputs, computed in float64
from the very same (possibly 16-bit) input values.

The Triton interpreter must be switched on before triton is imported, so the interpreter cases
run in one subprocess (this file run as a script with TRITON_INTERPRET=1) and never leak into
the rest of the pytest session.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from lsr_kernels import (check_head_inputs, choose_backend, splade_head, splade_max, splade_max_cpu, splade_sum_cpu,
                     vocab_tile_for)
from pipeline.encode.reference import splade_head_reference

REPO = Path(__file__).resolve().parents[1]


def make_inputs(n_rows: int, seq_len: int, vocab_size: int, n_hidden: int, *, dtype=torch.float32,
                seed: int = 0, lengths: list[int] | None = None, bias_shift: float = 0.0,
                holes: bool = False):
    """Random head inputs with logits of both signs; `lengths` gives per-row prefix masks."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n_rows, seq_len, n_hidden, generator=g).to(dtype)
    weight = (torch.randn(vocab_size, n_hidden, generator=g) / n_hidden ** 0.5).to(dtype)
    bias = torch.randn(vocab_size, generator=g) * 0.5 + bias_shift
    if lengths is None:
        lengths = torch.randint(0, seq_len + 1, (n_rows,), generator=g).tolist()
    mask = (torch.arange(seq_len)[None, :] < torch.tensor(lengths)[:, None]).long()
    if holes:  # non-prefix masks (left padding, packed segments)
        mask = mask * (torch.rand(n_rows, seq_len, generator=g) > 0.3).long()
    return hidden, weight, bias, mask


def plain_head(hidden, weight, bias, mask, activation: str = "relu", pooling: str = "max") -> torch.Tensor:
    """The plain expression on full (B, L, V) logits, in float64 from the same input values.

    "relu" is naver/splade's max(log1p(relu(logits)) * mask); the others follow
    sentence-transformers' SpladePooling docs: "log1p_relu" is log1p(log1p(relu(x))), "sum"
    pooling sums the activated, masked logits over the tokens.
    """
    logits = hidden.double() @ weight.double().T
    if bias is not None:
        logits = logits + bias.double()
    if activation == "relu" and pooling == "max":
        return splade_head_reference(logits, mask)
    x = torch.log1p(torch.relu(logits * (mask != 0).unsqueeze(-1).double()))
    if activation == "log1p_relu":
        x = torch.log1p(x)
    return x.max(dim=1).values if pooling == "max" else x.sum(dim=1)


# ---------------------------------------------------------------------------------- CPU twin

CPU_CASES = {
    # name: (B, L, V, H, lengths, vocab_tile)
    "square": (4, 32, 300, 64, [32, 32, 32, 32], None),
    "ragged": (5, 23, 517, 48, [23, 1, 0, 17, 9], None),
    "tile-remainder": (3, 19, 1000, 40, [19, 5, 12], 96),   # 1000 = 10 x 96 + 40
    "tile-of-one": (2, 7, 33, 8, [7, 3], 1),
    "all-masked": (3, 9, 50, 16, [0, 0, 0], None),
    "single-token": (6, 1, 77, 24, [1, 0, 1, 1, 0, 1], None),
    "splade-tiny-like": (4, 64, 30522, 128, [64, 40, 2, 0], None),
    "uniform-chunks": (3, 50, 700, 32, [48, 33, 47], 128),   # every row 3 chunks: the reshape path
}


@pytest.mark.parametrize("name", sorted(CPU_CASES))
def test_cpu_twin_matches_plain_fp32(name):
    n_rows, seq_len, vocab_size, n_hidden, lengths, tile = CPU_CASES[name]
    inputs = make_inputs(n_rows, seq_len, vocab_size, n_hidden, lengths=lengths, seed=zlib.crc32(name.encode()))
    out = splade_max_cpu(*inputs, vocab_tile=tile)
    expected = plain_head(*inputs)
    assert out.dtype == torch.float32 and out.shape == (n_rows, vocab_size)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)
    for row, length in enumerate(lengths):
        if length == 0:
            assert not out[row].any(), "a row without tokens must be all zeros"
    assert (out > 0).any() or all(n == 0 for n in lengths), "inputs should give some positive weights"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_twin_16bit_inputs(dtype):
    inputs = make_inputs(3, 40, 700, 64, dtype=dtype, lengths=[40, 13, 0], seed=3)
    out = splade_max_cpu(*inputs)
    # Same input values, float32 arithmetic: tight against the float64 expression ...
    torch.testing.assert_close(out.double(), plain_head(*inputs), rtol=1e-5, atol=1e-5)
    # ... and within the usual 16-bit tolerance of the expression run in the 16-bit dtype itself.
    hidden, weight, bias, mask = inputs
    logits16 = torch.nn.functional.linear(hidden, weight, bias.to(dtype))
    torch.testing.assert_close(out, splade_head_reference(logits16, mask).float(), rtol=5e-2, atol=5e-2)


def test_cpu_twin_non_prefix_masks_and_mask_dtypes():
    hidden, weight, bias, mask = make_inputs(4, 30, 200, 32, lengths=[30, 30, 20, 0], holes=True, seed=5)
    expected = plain_head(hidden, weight, bias, mask)
    for m in (mask, mask.bool(), mask.to(torch.int32), mask.to(torch.uint8)):
        torch.testing.assert_close(splade_max_cpu(hidden, weight, bias, m).double(), expected,
                                   rtol=1e-5, atol=1e-6)


def test_cpu_twin_negative_logits_give_zeros_and_no_bias():
    hidden, weight, bias, mask = make_inputs(3, 12, 90, 16, lengths=[12, 6, 1], bias_shift=-1e3)
    assert not splade_max_cpu(hidden, weight, bias, mask).any()
    out = splade_max_cpu(hidden, weight, None, mask)
    torch.testing.assert_close(out.double(), plain_head(hidden, weight, None, mask), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["square", "ragged", "tile-remainder", "all-masked", "uniform-chunks"])
@pytest.mark.parametrize("activation, pooling", [("log1p_relu", "max"), ("relu", "sum"), ("log1p_relu", "sum")])
def test_cpu_activation_and_sum_pooling_match_plain(name, activation, pooling):
    n_rows, seq_len, vocab_size, n_hidden, lengths, tile = CPU_CASES[name]
    inputs = make_inputs(n_rows, seq_len, vocab_size, n_hidden, lengths=lengths, seed=zlib.crc32(name.encode()))
    if pooling == "max":
        out = splade_max_cpu(*inputs, vocab_tile=tile, activation=activation)
    else:
        out = splade_sum_cpu(*inputs, vocab_tile=tile, activation=activation)
    torch.testing.assert_close(out.double(), plain_head(*inputs, activation, pooling), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(splade_head(*inputs, pooling=pooling, activation=activation), out)


def test_sum_pooling_masks_and_16bit():
    hidden, weight, bias, mask = make_inputs(4, 30, 200, 32, lengths=[30, 30, 20, 0], holes=True, seed=6)
    expected = plain_head(hidden, weight, bias, mask, "relu", "sum")
    for m in (mask, mask.bool(), mask.to(torch.uint8)):
        torch.testing.assert_close(splade_sum_cpu(hidden, weight, bias, m).double(), expected, rtol=1e-5, atol=1e-5)
    assert not splade_sum_cpu(hidden, weight, bias, mask)[3].any()
    h16, w16 = hidden.half(), weight.half()
    torch.testing.assert_close(splade_sum_cpu(h16, w16, None, mask).double(),
                               plain_head(h16, w16, None, mask, "relu", "sum"), rtol=1e-5, atol=1e-4)


def test_activation_and_pooling_names_checked():
    inputs = make_inputs(2, 6, 20, 8, lengths=[6, 2])
    with pytest.raises(ValueError, match="activation must be one of"):
        splade_max(*inputs, activation="gelu")
    with pytest.raises(ValueError, match="pooling must be one of"):
        splade_head(*inputs, pooling="mean")


def test_cpu_twin_non_contiguous_inputs():
    hidden, weight, bias, mask = make_inputs(3, 16, 128, 32, lengths=[16, 8, 3], seed=9)
    hidden_t = hidden.transpose(1, 2).contiguous().transpose(1, 2)  # same values, other strides
    weight_t = weight.T.contiguous().T
    torch.testing.assert_close(splade_max_cpu(hidden_t, weight_t, bias, mask),
                               splade_max_cpu(hidden, weight, bias, mask), rtol=1e-6, atol=1e-7)


def test_vocab_tile_for_bounds():
    from lsr_kernels.splade_cpu import MAX_VOCAB_TILE, MIN_VOCAB_TILE

    assert vocab_tile_for(1) == MAX_VOCAB_TILE and vocab_tile_for(10**8) == MIN_VOCAB_TILE
    assert all(vocab_tile_for(t) % 64 == 0 for t in (1, 100, 8192, 12345, 10**6))


def test_pack_tokens_chunks_rows():
    from lsr_kernels.splade_cpu import CHUNK, pack_tokens

    hidden = torch.arange(3 * 40, dtype=torch.float32).reshape(3, 40, 1)
    valid = torch.zeros(3, 40, dtype=torch.bool)
    valid[0, :17] = True          # 2 chunks: 17 tokens + 15 repeats of token 0
    valid[2, [3, 9, 30]] = True   # 1 chunk: non-prefix positions, 13 repeats of position 3
    tokens, chunks = pack_tokens(hidden, valid)
    assert chunks.tolist() == [2, 0, 1] and tokens.shape == (3 * CHUNK, 1)
    assert tokens[:17, 0].tolist() == list(range(17)) and set(tokens[17:32, 0].tolist()) == {0.0}
    assert tokens[32:35, 0].tolist() == [83.0, 89.0, 110.0] and set(tokens[35:, 0].tolist()) == {83.0}


@pytest.mark.parametrize("bad, message", [
    (lambda h, w, b, m: (h[0], w, b, m), "hidden must be"),
    (lambda h, w, b, m: (h, w[:, :5], b, m), "weight is"),
    (lambda h, w, b, m: (h, w.half(), b, m), "differs from hidden"),
    (lambda h, w, b, m: (h.double(), w.double(), b, m), "not supported"),
    (lambda h, w, b, m: (h, w, b, m[:, :3]), "mask must be"),
    (lambda h, w, b, m: (h, w, b, m.float()), "bool or integer"),
    (lambda h, w, b, m: (h, w, b[:4], m), "bias must be"),
])
def test_head_inputs_validated(bad, message):
    inputs = bad(*make_inputs(2, 6, 20, 8, lengths=[6, 2]))
    with pytest.raises(ValueError, match=message):
        check_head_inputs(*inputs)
    with pytest.raises(ValueError, match=message):
        splade_max(*inputs)


# ---------------------------------------------------------------------------------- dispatcher

def test_dispatcher_picks_by_device_and_override(monkeypatch):
    monkeypatch.delenv("LSR_SPLADE_BACKEND", raising=False)
    assert choose_backend(torch.device("cpu")) == "torch"
    assert choose_backend(torch.device("cuda", 0)) == "triton"
    assert choose_backend(torch.device("cuda"), "torch") == "torch"
    monkeypatch.setenv("LSR_SPLADE_BACKEND", "triton")
    assert choose_backend(torch.device("cpu")) == "triton"
    monkeypatch.setenv("LSR_SPLADE_BACKEND", "gpu")
    with pytest.raises(ValueError, match="LSR_SPLADE_BACKEND"):
        choose_backend(torch.device("cpu"))
    with pytest.raises(ValueError, match="backend"):
        choose_backend(torch.device("cpu"), "cuda")


def test_dispatcher_cpu_result_and_triton_refusal_without_interpreter(monkeypatch):
    monkeypatch.delenv("LSR_SPLADE_BACKEND", raising=False)
    inputs = make_inputs(3, 10, 64, 16, lengths=[10, 4, 0])
    torch.testing.assert_close(splade_max(*inputs).double(), plain_head(*inputs), rtol=1e-5, atol=1e-6)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.skip("this session runs the Triton interpreter")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        splade_max(*inputs, backend="triton")


# ---------------------------------------------------------------------------------- Triton, interpreter

# name: (B, L, V, H, lengths, blocks (BLOCK_V, BLOCK_L, BLOCK_H), extra)
INTERPRETER_CASES = {
    "ragged-remainders": (3, 37, 100, 40, [37, 0, 20], (32, 16, 16), {}),
    "fully-masked-tiles-skipped": (2, 64, 64, 32, [64, 3], (32, 16, 32), {}),
    "non-prefix-masks": (3, 24, 50, 16, [24, 24, 10], (16, 8, 16), {"holes": True}),
    "negative-logits": (2, 16, 40, 16, [16, 9], (32, 16, 16), {"bias_shift": -1e3}),
    "no-bias": (2, 20, 70, 24, [20, 7], (32, 16, 8), {"no_bias": True}),
    "single-row-token": (1, 1, 33, 8, [1], (16, 16, 8), {}),
    "hopper-sized-tiles": (2, 70, 300, 96, [70, 41], (128, 64, 64), {}),  # HOPPER_CONFIGS[0]'s tiles
    "row-groups": (19, 16, 70, 16, [16, 3, 0, 9, 16, 1, 2, 5, 8, 16, 11, 4, 7, 0, 16, 12, 6, 10, 13],
                   (32, 16, 16), {}),  # groups of 8 rows: 8 + 8 + 3
    "log1p-relu-activation": (3, 37, 100, 40, [37, 0, 20], (32, 16, 16), {"activation": "log1p_relu"}),
    "log1p-relu-no-bias": (2, 20, 70, 24, [20, 7], (32, 16, 8), {"activation": "log1p_relu", "no_bias": True}),
}
INTERPRETER_DTYPES = ("float32", "float16")  # bf16 tl.dot is wrong under the interpreter: GPU only


def _interpreter_cases() -> dict:
    """Run in a subprocess with TRITON_INTERPRET=1: every case, through the kernel and the dispatcher."""
    assert os.environ.get("TRITON_INTERPRET") == "1"
    from lsr_kernels.splade_triton import splade_max_triton

    results = {}
    for name, (n_rows, seq_len, vocab_size, n_hidden, lengths, blocks, extra) in INTERPRETER_CASES.items():
        for dtype_name in INTERPRETER_DTYPES:
            dtype = getattr(torch, dtype_name)
            hidden, weight, bias, mask = make_inputs(
                n_rows, seq_len, vocab_size, n_hidden, dtype=dtype, lengths=lengths, seed=len(name),
                bias_shift=extra.get("bias_shift", 0.0), holes=extra.get("holes", False))
            if extra.get("no_bias"):
                bias = None
            activation = extra.get("activation", "relu")
            out = splade_max_triton(hidden, weight, bias, mask, blocks=blocks, activation=activation)
            expected = plain_head(hidden, weight, bias, mask, activation)
            results[f"{name}/{dtype_name}"] = {
                "max_abs_err": float((out.double() - expected).abs().max()),
                "max_rel_err": float(((out.double() - expected).abs() / expected.abs().clamp(min=1e-3)).max()),
                "zeros_where_expected": bool(((expected == 0) <= (out == 0)).all()),
                "positive": int((expected > 0).sum()),
                "dtype": str(out.dtype), "shape": list(out.shape),
            }
    # The dispatcher forced onto Triton for CPU tensors (default interpreter tiles).
    os.environ["LSR_SPLADE_BACKEND"] = "triton"
    inputs = make_inputs(3, 21, 90, 32, lengths=[21, 0, 11], seed=11)
    out = splade_max(*inputs)
    results["dispatcher-forced"] = {"max_abs_err": float((out.double() - plain_head(*inputs)).abs().max()),
                                    "max_rel_err": 0.0, "zeros_where_expected": True, "positive": 1,
                                    "dtype": str(out.dtype), "shape": list(out.shape)}
    return results


@pytest.fixture(scope="module")
def interpreter_results() -> dict:
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, __file__, "--interpreter-cases"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("dtype_name", INTERPRETER_DTYPES)
@pytest.mark.parametrize("name", sorted(INTERPRETER_CASES))
def test_triton_interpreter_matches_plain(interpreter_results, name, dtype_name):
    result = interpreter_results[f"{name}/{dtype_name}"]
    assert result["dtype"] == "torch.float32"
    n_rows, _, vocab_size, *_ = INTERPRETER_CASES[name]
    assert result["shape"] == [n_rows, vocab_size]
    assert result["max_abs_err"] <= 1e-5 and result["max_rel_err"] <= 1e-4, result
    assert result["zeros_where_expected"], result
    if name == "negative-logits":
        assert result["positive"] == 0 and result["max_abs_err"] == 0.0
    else:
        assert result["positive"] > 0


def test_triton_dispatcher_forced_under_interpreter(interpreter_results):
    result = interpreter_results["dispatcher-forced"]
    assert result["shape"] == [3, 90] and result["max_abs_err"] <= 1e-5, result


def test_autotune_pruning_fits_tiles_to_shapes():
    from lsr_kernels.splade_triton import FP32_CONFIGS, HOPPER_CONFIGS, _prune_configs

    short = _prune_configs(HOPPER_CONFIGS, {"L": 20, "H": 768})
    assert short and all(c.kwargs["BLOCK_L"] == 32 for c in short)
    assert _prune_configs(HOPPER_CONFIGS, {"L": 256, "H": 768}) == HOPPER_CONFIGS
    narrow = _prune_configs(HOPPER_CONFIGS, {"L": 256, "H": 64})
    assert narrow and all(c.kwargs["BLOCK_H"] <= 64 for c in narrow)
    assert _prune_configs(FP32_CONFIGS, {"L": 8, "H": 16})  # never empty


# ---------------------------------------------------------------------------------- Triton, sm_90 build

def _resource_usage(cubin: bytes, tmp_path: Path) -> dict[str, int] | None:
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        return None
    path = tmp_path / "kernel.cubin"
    path.write_bytes(cubin)
    report = subprocess.run([str(tool), "-res-usage", str(path)], capture_output=True, text=True).stdout
    match = re.search(r"REG:(\d+) STACK:(\d+)", report)
    return {"registers": int(match.group(1)), "stack": int(match.group(2))} if match else None


def _hopper_build_cases(all_configs: bool):
    from lsr_kernels.splade_triton import FP32_CONFIGS, HOPPER_CONFIGS

    if not all_configs:
        return [(torch.bfloat16, HOPPER_CONFIGS[0]), (torch.bfloat16, HOPPER_CONFIGS[-1]),
                (torch.float32, FP32_CONFIGS[0])]
    return ([(torch.bfloat16, c) for c in HOPPER_CONFIGS] + [(torch.float16, c) for c in HOPPER_CONFIGS]
            + [(torch.float32, c) for c in FP32_CONFIGS])


def _check_hopper_build(dtype, config, tmp_path):
    from lsr_kernels.splade_triton import compile_ahead

    kernel = compile_ahead(dtype, config, capability=90)
    ptx = kernel.asm["ptx"]
    if dtype != torch.float32 and config.kwargs["BLOCK_L"] >= 64:
        assert "wgmma.mma_async" in ptx, f"{config} should use Hopper warpgroup MMA"
    if config.num_stages > 1:
        assert "cp.async" in ptx, f"{config}: loads should be pipelined with async copies"
    assert kernel.metadata.shared <= 227 * 1024
    usage = _resource_usage(kernel.asm["cubin"], tmp_path)
    if usage is not None:
        assert usage["stack"] == 0, f"{config} spills registers: {usage}"


def test_hopper_configs_compile_default_subset(tmp_path):
    """No GPU needed: ptxas builds sm_90 code; wgmma, async copies, no spills."""
    for dtype, config in _hopper_build_cases(all_configs=False):
        _check_hopper_build(dtype, config, tmp_path)


def test_hopper_build_with_log1p_relu_activation(tmp_path):
    from lsr_kernels.splade_triton import HOPPER_CONFIGS, compile_ahead

    kernel = compile_ahead(torch.bfloat16, HOPPER_CONFIGS[0], capability=90, activation="log1p_relu")
    plain = compile_ahead(torch.bfloat16, HOPPER_CONFIGS[0], capability=90)
    assert "wgmma.mma_async" in kernel.asm["ptx"]
    # the second log1p (libdevice, inlined) adds instructions after the loop
    assert len(kernel.asm["ptx"].splitlines()) > len(plain.asm["ptx"].splitlines())


@pytest.mark.slow
def test_hopper_configs_compile_all(tmp_path):
    for dtype, config in _hopper_build_cases(all_configs=True):
        _check_hopper_build(dtype, config, tmp_path)


# ---------------------------------------------------------------------------------- Triton, on a GPU

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(4, 37, 1000, 64), (8, 200, 30522, 128), (16, 256, 30522, 768),
                                   (3, 64, 250002, 1024)])
def test_triton_gpu_matches_plain(dtype, shape):
    n_rows, seq_len, vocab_size, n_hidden = shape
    lengths = torch.randint(0, seq_len + 1, (n_rows,)).tolist()
    lengths[0] = seq_len
    hidden, weight, bias, mask = (t.cuda() for t in make_inputs(
        n_rows, seq_len, vocab_size, n_hidden, dtype=dtype, lengths=lengths, seed=n_rows))
    out = splade_max(hidden, weight, bias, mask)  # auto: the Triton kernel on CUDA
    assert torch.isfinite(out).all()
    expected = plain_head(hidden.cpu(), weight.cpu(), bias.cpu(), mask.cpu())
    torch.testing.assert_close(out.cpu().double(), expected, rtol=1e-3, atol=1e-3)
    # and the twin on the same device agrees
    torch.testing.assert_close(splade_max(hidden, weight, bias, mask, backend="torch"), out,
                               rtol=1e-3, atol=1e-3)
    fused = splade_max(hidden, weight, bias, mask, activation="log1p_relu")
    torch.testing.assert_close(fused.cpu().double(), plain_head(hidden.cpu(), weight.cpu(), bias.cpu(), mask.cpu(),
                                                                "log1p_relu"), rtol=1e-3, atol=1e-3)


if __name__ == "__main__":
    if sys.argv[1:] == ["--interpreter-cases"]:
        print(json.dumps(_interpreter_cases()))
    else:
        sys.exit(f"usage: TRITON_INTERPRET=1 python {sys.argv[0]} --interpreter-cases")
