"""Fused SPLADE head in Triton: vocabulary projection + masked max over tokens + ReLU + log1p
(+ a second log1p for the "log1p_relu" activation).

Same contract as `lsr_kernels.checks`. One program owns one (row, vocabulary tile) pair and walks
the row's tokens in tiles of BLOCK_L; each token tile is a (BLOCK_L, BLOCK_H) x (BLOCK_H, BLOCK_V)
tiled product over the hidden size accumulated in float32, reduced at once into a running max
over raw logits. The (B, L, V) logits never leave registers.

- ReLU is fused into the running max's initial value: with m0 = -bias,
  max(m0, max_l x_l) + bias == relu(max_l (x_l + bias)); the bias is added once and log1p
  applied once per output.
- Token tiles whose mask is all zero (padding of shorter rows) are skipped.
- Programs run in groups of GROUP_ROWS rows that sweep the vocabulary together (row fastest),
  so concurrent programs share weight tiles and hidden rows through L2.

Hopper (H100/H200) habits: BLOCK_L and BLOCK_V multiples of 64 with 4 or 8 warps so that `tl.dot`
lowers to warpgroup MMA (wgmma) on fp16/bf16; 3-4 pipeline stages over the hidden loop.
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from lsr_kernels.checks import check_activation, check_head_inputs


def _config(block_v: int, block_l: int, block_h: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BLOCK_V": block_v, "BLOCK_L": block_l, "BLOCK_H": block_h},
                         num_warps=warps, num_stages=stages)


#: Candidate tiles for Hopper with fp16/bf16 inputs, (BLOCK_V, BLOCK_L, BLOCK_H, warps, stages).
#: BLOCK_L >= 64 lowers `tl.dot` to wgmma; shared memory is stages x (BLOCK_L + BLOCK_V) x BLOCK_H
#: x 2 B (at most 160 KiB here, under the 227 KiB per block). Each was compiled ahead of time for
#: sm_90 (tests/test_kernels.py::test_hopper_configs_compile): wgmma present, no register spills.
#: (256, 128, 64) spilled (accumulator 128 registers per thread on 8 warps) and is left out, as is
#: (128, 128, 64) on 4 warps: as fast as (128, 256, 64) on an H200 under Triton 3.6, but it spills
#: 128 bytes a thread under Triton 3.9.
HOPPER_CONFIGS = [
    _config(128, 64, 64, 4, 4),
    _config(128, 64, 128, 4, 3),
    _config(128, 128, 64, 8, 3),
    _config(128, 128, 64, 8, 4),
    _config(256, 64, 64, 8, 3),
    _config(256, 64, 64, 8, 4),
    _config(64, 64, 128, 4, 4),
    _config(128, 256, 64, 8, 3),  # long rows: fastest at L=256-512 on an H200 (BENCHMARKS §1)
    _config(128, 32, 64, 4, 4),   # short rows (queries): mma.sync, less padding work
    _config(256, 32, 64, 8, 3),
]

#: float32 inputs take IEEE products on CUDA cores (no TF32): small tiles, no spills.
FP32_CONFIGS = [
    _config(64, 32, 32, 4, 2),
    _config(128, 32, 32, 4, 2),
    _config(64, 64, 16, 4, 3),
    _config(32, 64, 32, 4, 2),
]


def _prune_configs(configs, named_args, **kwargs):
    """Drop token tiles much longer than the rows and hidden tiles longer than H."""
    seq_len, n_hidden = named_args["L"], named_args["H"]
    kept = [c for c in configs
            if c.kwargs["BLOCK_L"] <= max(32, triton.next_power_of_2(seq_len))
            and c.kwargs["BLOCK_H"] <= max(32, triton.next_power_of_2(n_hidden))]
    return kept or configs


@triton.jit
def _log1p(x):
    """log(1 + x), accurate for small x (Kahan's trick): the interpreter has no libdevice.log1p."""
    u = 1.0 + x
    exact = u == 1.0
    return tl.where(exact, x, tl.log(u) * (x / tl.where(exact, 1.0, u - 1.0)))


@triton.jit
def _splade_max_kernel(
    hidden_ptr, weight_ptr, bias_ptr, mask_ptr, out_ptr,
    B, L, V, H,
    stride_hb, stride_hl, stride_hh,
    stride_wv, stride_wh,
    stride_mb, stride_ml,
    stride_ob, stride_ov,
    L_BUCKET,  # next power of two of L: the autotuning key, unused in the body
    BLOCK_V: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_H: tl.constexpr, GROUP_ROWS: tl.constexpr,
    IEEE_FP32: tl.constexpr, LIBDEVICE: tl.constexpr, LOG1P_TWICE: tl.constexpr,
):
    # Grouped order: GROUP_ROWS rows walk the vocabulary together, so their hidden states and the
    # current weight tiles stay in L2 (each row is read from memory once, the weight once per group).
    pid = tl.program_id(0)
    n_v_tiles = tl.cdiv(V, BLOCK_V)
    programs_per_group = GROUP_ROWS * n_v_tiles
    first_row = (pid // programs_per_group) * GROUP_ROWS
    rows_in_group = tl.minimum(B - first_row, GROUP_ROWS)
    local = pid % programs_per_group
    row = (first_row + local % rows_in_group).to(tl.int64)
    v_tile = local // rows_in_group

    offs_v = v_tile * BLOCK_V + tl.arange(0, BLOCK_V)
    v_ok = offs_v < V
    bias = tl.load(bias_ptr + offs_v, mask=v_ok, other=0.0).to(tl.float32)
    running_max = -bias  # ReLU fused: the final max is never below -bias

    hidden_row = hidden_ptr + row * stride_hb
    mask_row = mask_ptr + row * stride_mb
    weight_cols = weight_ptr + offs_v.to(tl.int64)[None, :] * stride_wv

    for l_start in range(0, L, BLOCK_L):
        offs_l = l_start + tl.arange(0, BLOCK_L)
        tok = tl.load(mask_row + offs_l * stride_ml, mask=offs_l < L, other=0)
        tok_ok = tok != 0
        if tl.max(tok_ok.to(tl.int32), axis=0) > 0:  # skip all-padding token tiles
            acc = tl.zeros((BLOCK_L, BLOCK_V), dtype=tl.float32)
            for h_start in range(0, H, BLOCK_H):
                offs_h = h_start + tl.arange(0, BLOCK_H)
                h_ok = offs_h < H
                x = tl.load(hidden_row + offs_l[:, None] * stride_hl + offs_h[None, :] * stride_hh,
                            mask=tok_ok[:, None] & h_ok[None, :], other=0.0)
                w = tl.load(weight_cols + offs_h[:, None] * stride_wh,
                            mask=h_ok[:, None] & v_ok[None, :], other=0.0)
                if IEEE_FP32:
                    acc = tl.dot(x, w, acc, input_precision="ieee")
                else:
                    acc = tl.dot(x, w, acc)
            acc = tl.where(tok_ok[:, None], acc, float("-inf"))
            running_max = tl.maximum(running_max, tl.max(acc, axis=0))

    if LIBDEVICE:
        weights = libdevice.log1p(running_max + bias)
        if LOG1P_TWICE:  # activation "log1p_relu": log1p(log1p(relu(x)))
            weights = libdevice.log1p(weights)
    else:
        weights = _log1p(running_max + bias)
        if LOG1P_TWICE:
            weights = _log1p(weights)
    tl.store(out_ptr + row * stride_ob + offs_v * stride_ov, weights, mask=v_ok)


def _autotuned(configs: list[triton.Config]):
    return triton.autotune(configs=configs, key=["L_BUCKET", "V", "H"],
                           prune_configs_by={"early_config_prune": _prune_configs})(_splade_max_kernel)


_splade_max_16bit = _autotuned(HOPPER_CONFIGS)
_splade_max_fp32 = _autotuned(FP32_CONFIGS)


#: Rows per program group. 8 rows of (L=512, H=1024) bf16 hidden states are 8 MiB: with the
#: weight tiles in flight they fit the 50 MiB L2 of an H100, so hidden states are read from HBM
#: once and the weight B / 8 times (row-major order without groups re-reads every hidden row
#: once per vocabulary tile when B x L x H outgrows L2).
GROUP_ROWS = 8

#: Tiles used under TRITON_INTERPRET=1 when none are given: small powers of two (the interpreter
#: needs them) so tests stay fast; autotuning there would time the interpreter, not a GPU.
INTERPRETER_BLOCKS = (32, 16, 16)


def interpreter_active() -> bool:
    """True when Triton runs kernels on the CPU interpreter (TRITON_INTERPRET=1, set before import)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def splade_max_triton(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      mask: torch.Tensor, *, blocks: tuple[int, int, int] | None = None,
                      num_warps: int = 4, num_stages: int = 2, group_rows: int = GROUP_ROWS,
                      activation: str = "relu") -> torch.Tensor:
    """SPLADE weights (B, V) float32 through the fused Triton kernel.

    `activation`: "relu" (log1p(relu(max))) or "log1p_relu" (log1p(log1p(relu(max)))).

    Inputs on a CUDA device (or on the CPU under TRITON_INTERPRET=1). `blocks=(BLOCK_V, BLOCK_L,
    BLOCK_H)` fixes the tile sizes and skips autotuning (powers of two; >= 16 on a GPU); without it
    the Hopper configurations are autotuned per (L bucket, V, H, dtype), or `INTERPRETER_BLOCKS`
    are used under the interpreter. `group_rows` rows sweep the vocabulary together (L2 reuse).
    float32 inputs use IEEE float32 products (no TF32), so they match the plain expression to
    float32 rounding.
    """
    n_rows, seq_len, vocab_size, n_hidden = check_head_inputs(hidden, weight, bias, mask)
    check_activation(activation)
    if hidden.device.type != "cuda" and not interpreter_active():
        raise RuntimeError(
            f"the Triton SPLADE kernel needs CUDA tensors (got {hidden.device}); on CPU use "
            "lsr_kernels.splade_max_cpu, or set TRITON_INTERPRET=1 before importing triton to test it")
    if group_rows < 1:
        raise ValueError(f"group_rows must be >= 1, got {group_rows}")
    out = torch.empty((n_rows, vocab_size), dtype=torch.float32, device=hidden.device)
    if n_rows == 0 or vocab_size == 0:
        return out
    if hidden.stride(-1) != 1:
        hidden = hidden.contiguous()
    if weight.stride(-1) != 1:
        weight = weight.contiguous()
    if bias is None:
        bias = torch.zeros(vocab_size, dtype=torch.float32, device=hidden.device)
    bias = bias.contiguous()
    mask = (mask != 0).to(torch.int8)
    args = (hidden, weight, bias, mask, out, n_rows, seq_len, vocab_size, n_hidden,
            *hidden.stride(), *weight.stride(), *mask.stride(), *out.stride(),
            triton.next_power_of_2(max(seq_len, 1)))
    flags = {"IEEE_FP32": hidden.dtype == torch.float32, "LIBDEVICE": not interpreter_active(),
             "GROUP_ROWS": group_rows, "LOG1P_TWICE": activation == "log1p_relu"}
    if blocks is None and interpreter_active():
        blocks = INTERPRETER_BLOCKS
    if blocks is not None:
        for name, size in zip(("BLOCK_V", "BLOCK_L", "BLOCK_H"), blocks):
            if size < 1 or size & (size - 1):
                raise ValueError(f"{name} must be a power of two, got {size}")
    # Launch on the inputs' GPU, not the current one ("cuda:1" encoders).
    with torch.cuda.device(hidden.device) if hidden.device.type == "cuda" else contextlib.nullcontext():
        if blocks is None:
            grid = lambda meta: (n_rows * triton.cdiv(vocab_size, meta["BLOCK_V"]),)  # noqa: E731
            tuned = _splade_max_fp32 if hidden.dtype == torch.float32 else _splade_max_16bit
            tuned[grid](*args, **flags, enable_fp_fusion=True)
        else:
            block_v, block_l, block_h = blocks
            _splade_max_kernel[(n_rows * triton.cdiv(vocab_size, block_v),)](
                *args, BLOCK_V=block_v, BLOCK_L=block_l, BLOCK_H=block_h, num_warps=num_warps,
                num_stages=num_stages, enable_fp_fusion=True, **flags)
    return out


_TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def compile_ahead(dtype: torch.dtype, config: triton.Config, capability: int = 90, activation: str = "relu"):
    """Compile the kernel for a CUDA target without a GPU (ptxas ships with Triton), for inspection.

    Specialised like a runtime launch on contiguous inputs whose strides, L and H are multiples of 16
    (which lets the pipeliner use async copies). Returns Triton's compiled kernel: `.asm["ptx"]`,
    `.asm["cubin"]`, `.metadata.shared` (bytes of shared memory).
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    element = f"*{_TRITON_TYPES[dtype]}"
    signature = {
        "hidden_ptr": element, "weight_ptr": element, "bias_ptr": "*fp32", "mask_ptr": "*i8",
        "out_ptr": "*fp32", "B": "i32", "L": "i32", "V": "i32", "H": "i32",
        "stride_hb": "i32", "stride_hl": "i32", "stride_hh": "constexpr",
        "stride_wv": "i32", "stride_wh": "constexpr", "stride_mb": "i32", "stride_ml": "constexpr",
        "stride_ob": "i32", "stride_ov": "constexpr", "L_BUCKET": "i32",
        "BLOCK_V": "constexpr", "BLOCK_L": "constexpr", "BLOCK_H": "constexpr",
        "GROUP_ROWS": "constexpr", "IEEE_FP32": "constexpr", "LIBDEVICE": "constexpr",
        "LOG1P_TWICE": "constexpr",
    }
    constants = dict(config.kwargs, stride_hh=1, stride_wh=1, stride_ml=1, stride_ov=1, GROUP_ROWS=GROUP_ROWS,
                     IEEE_FP32=dtype == torch.float32, LIBDEVICE=True,
                     LOG1P_TWICE=check_activation(activation) == "log1p_relu")
    aligned = {"hidden_ptr", "weight_ptr", "bias_ptr", "mask_ptr", "out_ptr", "L", "H",
               "stride_hb", "stride_hl", "stride_wv", "stride_mb"}
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(signature) if name in aligned}
    source = ASTSource(_splade_max_kernel, signature, constexprs=constants, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", capability, 32),
                          options={"num_warps": config.num_warps, "num_stages": config.num_stages,
                                   "enable_fp_fusion": True})
