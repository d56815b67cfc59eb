"""Time the fused SPLADE head's tile configurations one by one on a GPU (what autotuning picks from).

For one shape, each (BLOCK_V, BLOCK_L, BLOCK_H, warps, stages) of HOPPER_CONFIGS plus a few larger
candidates, and GROUP_ROWS variants of the fastest: median time over triton.testing.do_bench, the
rate in TFLOP/s and the check against the plain expression (bf16 inputs, float32 reference on GPU).
  python jobs/gpu_tiles.py --shape 128,512,30522,768
"""

from __future__ import annotations

import argparse

import torch
import triton

from lsr_kernels.splade_triton import HOPPER_CONFIGS, splade_max_triton
from pipeline.encode.reference import splade_head_reference

EXTRA = [(256, 128, 64, 8, 3), (256, 128, 32, 8, 4), (128, 128, 128, 8, 3), (64, 128, 64, 4, 4),
         (128, 128, 64, 4, 3), (256, 64, 128, 8, 3)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="128,512,30522,768")
    parser.add_argument("--only", default="", help="BLOCK_V,BLOCK_L,BLOCK_H,warps,stages: time this tile alone "
                        "(for a profiler: `ncu -k regex:_splade_max_kernel --launch-count 1 ...`)")
    args = parser.parse_args()
    b, l, v, h = (int(x) for x in args.shape.split(","))
    g = torch.Generator(device="cuda").manual_seed(1)
    hidden = torch.randn(b, l, h, device="cuda", generator=g).to(torch.bfloat16)
    weight = (torch.randn(v, h, device="cuda", generator=g) * h ** -0.5).to(torch.bfloat16)
    bias = torch.randn(v, device="cuda", generator=g) * 0.5
    mask = torch.ones(b, l, dtype=torch.long, device="cuda")
    # naver/splade's plain expression on float32 logits, not the max-first identity the kernel uses
    ref = splade_head_reference(torch.nn.functional.linear(hidden.float(), weight.float(), bias), mask)
    flop = 2 * b * l * v * h
    candidates = [(c.kwargs["BLOCK_V"], c.kwargs["BLOCK_L"], c.kwargs["BLOCK_H"], c.num_warps, c.num_stages)
                  for c in HOPPER_CONFIGS] + EXTRA
    if args.only:
        candidates = [tuple(int(x) for x in args.only.split(","))]
    results = []
    for bv, bl, bh, warps, stages in candidates:
        def run(group=8):
            return splade_max_triton(hidden, weight, bias, mask, blocks=(bv, bl, bh), num_warps=warps,
                                     num_stages=stages, group_rows=group)
        try:
            out = run()
            err = ((out - ref).norm() / ref.norm()).item()
            ms = triton.testing.do_bench(run, warmup=50, rep=300, return_mode="median")
        except Exception as exc:  # a config the compiler rejects (shared memory, registers)
            print(f"{(bv, bl, bh, warps, stages)}: failed: {str(exc).splitlines()[0][:120]}", flush=True)
            continue
        results.append((ms, (bv, bl, bh, warps, stages)))
        print(f"{(bv, bl, bh, warps, stages)}: {ms:7.3f} ms  {flop / ms / 1e9:6.0f} TFLOP/s  rel err {err:.1e}",
              flush=True)
    ms, best = min(results)
    if args.only:
        return
    bv, bl, bh, warps, stages = best
    for group in (1, 4, 16, 32):
        t = triton.testing.do_bench(lambda: splade_max_triton(hidden, weight, bias, mask, blocks=(bv, bl, bh),
                                                              num_warps=warps, num_stages=stages, group_rows=group),
                                    warmup=50, rep=300, return_mode="median")
        print(f"best {best} group_rows {group}: {t:7.3f} ms (group 8: {ms:.3f})", flush=True)
    gemm = triton.testing.do_bench(lambda: hidden.reshape(-1, h) @ weight.T, warmup=50, rep=300,
                                   return_mode="median")
    print(f"bare GEMM {gemm:.3f} ms ({flop / gemm / 1e9:.0f} TFLOP/s); best fused {ms:.3f} ms = {ms / gemm:.2f}x")


if __name__ == "__main__":
    main()
