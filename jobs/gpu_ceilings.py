"""Measure the two ceilings of the lent GPU that the head benchmark is read against.

- copy bandwidth: a device-to-device copy of 4 GiB, counting bytes read plus bytes written;
- bf16 matrix rate: an 8192 x 8192 x 8192 product on random data.

Each is the median time of `triton.testing.do_bench` (CUDA events, 0.5 s of runs after a warm-up).
Usage, on a CUDA machine: python jobs/gpu_ceilings.py
"""

from __future__ import annotations

import torch
import triton


def _median_ms(fn) -> float:
    return triton.testing.do_bench(fn, warmup=50, rep=500, return_mode="median")


def main() -> None:
    props = torch.cuda.get_device_properties(0)
    print(f"device: {props.name}, {props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB, "
          f"torch {torch.__version__}")
    src = torch.randn(2**30, device="cuda")  # 4 GiB of float32
    dst = torch.empty_like(src)
    ms = _median_ms(lambda: dst.copy_(src))
    print(f"copy: {2 * src.numel() * 4 / (ms / 1e3) / 1e12:.2f} TB/s read+write ({ms:.2f} ms for 2 x 4 GiB)")
    del src, dst
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = _median_ms(lambda: a @ b)
    print(f"bf16 matmul 8192^3: {2 * 8192**3 / (ms / 1e3) / 1e12:.0f} TFLOP/s ({ms:.2f} ms)")


if __name__ == "__main__":
    main()
