"""Measure the two ceilings of the lent GPU that the head benchmark is read against.

- copy bandwidth: a device-to-device copy of 4 GiB, counting bytes read plus bytes written;
- bf16 matrix rate: an 8192 x 8192 x 8192 product on random data.

Each is the median of 20 timed runs (CUDA events) after 3 warm-ups. Usage (on a CUDA machine):
  python jobs/gpu_ceilings.py
"""

from __future__ import annotations

import statistics

import torch


def _median_ms(fn, repeats: int = 20, warmups: int = 3) -> float:
    for _ in range(warmups):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


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
