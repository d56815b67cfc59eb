"""Benchmark the SPLADE head: plain PyTorch expression, CPU twin, fused Triton kernel, bare GEMM.

For each shape (B, L, V, H) it times, in a fresh subprocess each (so peak memory is clean):
  plain   log1p(relu(hidden @ W.T + b)) * mask, max over L   (naver/splade; materialises B x L x V)
  twin    lsr_kernels.splade_max_cpu                              (vocabulary-tiled, max-first)
  triton  lsr_kernels.splade_triton.splade_max_triton             (CUDA only)
  gemm    (B*L, H) @ (H, V)                                   (the arithmetic floor; writes B x L x V)
and prints median time, peak extra memory and ratios against peers measured in the same run.
With --encoder N it also times end-to-end encoding of the first N scifact documents by `--model`
(splade-tiny, or a BERT-base-sized model with random weights), against the plain pipeline on the
same device and dtype.

Examples (run benchmarks under the shared lock):
  flock /tmp/lsr-bench.lock .venv/bin/python jobs/bench_head.py --device cpu
  flock /tmp/lsr-bench.lock .venv/bin/python jobs/bench_head.py --device cuda --dtype bfloat16 \
      --shapes 32,256,30522,768 64,256,30522,768 128,512,30522,768 32,256,250002,1024 128,512,250002,1024
  flock /tmp/lsr-bench.lock .venv/bin/python jobs/bench_head.py --device cpu --shapes none --encoder 256
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHAPES = ["32,256,30522,128", "32,256,30522,768", "64,256,30522,768", "128,512,30522,768",
                  "32,256,250002,1024", "128,512,250002,1024"]
IMPLEMENTATIONS = ("plain", "twin", "triton", "gemm")


# ------------------------------------------------------------------------------------ machine

def machine_description(device: str) -> str:
    import torch

    from pipeline.testing.machine import machine_line

    return f"{machine_line()}; torch threads {torch.get_num_threads()}; device {device}"


def available_memory_bytes() -> int:
    try:
        for line in open("/proc/meminfo", encoding="utf-8"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


def current_rss_bytes() -> int:
    with open("/proc/self/statm", encoding="utf-8") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ------------------------------------------------------------------------------------ one measurement

def make_inputs(shape, dtype, device, lengths_mode: str, seed: int = 0):
    import torch

    n_rows, seq_len, vocab_size, n_hidden = shape
    g = torch.Generator(device="cpu").manual_seed(seed)
    hidden = torch.randn(n_rows, seq_len, n_hidden, generator=g).to(dtype=dtype, device=device)
    weight = torch.randn(vocab_size, n_hidden, generator=g).mul_(n_hidden ** -0.5).to(dtype=dtype, device=device)
    bias = torch.randn(vocab_size, generator=g).mul_(0.5).to(dtype=dtype, device=device)
    if lengths_mode == "full":
        lengths = torch.full((n_rows,), seq_len)
    else:  # ragged: uniform in [L/4, L]
        lengths = torch.randint(seq_len // 4, seq_len + 1, (n_rows,), generator=g)
    mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).to(torch.long).to(device)
    return hidden, weight, bias, mask


def worker(impl: str, shape, dtype_name: str, device: str, repeats: int, lengths_mode: str) -> dict:
    """Time one implementation on one shape in this (fresh) process; returns a JSON-able dict."""
    import torch

    from lsr_kernels import splade_max_cpu
    from pipeline.encode.reference import splade_head_reference

    dtype = getattr(torch, dtype_name)
    hidden, weight, bias, mask = make_inputs(shape, dtype, device, lengths_mode)
    cuda = device == "cuda"

    if impl == "plain":
        def run():
            return splade_head_reference(torch.nn.functional.linear(hidden, weight, bias), mask)
    elif impl == "twin":
        def run():
            return splade_max_cpu(hidden, weight, bias, mask)
    elif impl == "triton":
        if not cuda:
            return {"skipped": "Triton kernel needs CUDA"}
        from lsr_kernels.splade_triton import splade_max_triton

        def run():
            return splade_max_triton(hidden, weight, bias, mask)
    elif impl == "gemm":
        flat = hidden.reshape(-1, hidden.shape[-1])

        def run():
            return flat @ weight.T
    else:
        raise ValueError(impl)

    with torch.inference_mode():
        if cuda:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        else:
            base = current_rss_bytes()
        try:
            out = run()  # warm-up (and autotuning for Triton)
            if cuda:
                torch.cuda.synchronize()
        except torch.OutOfMemoryError as exc:
            return {"error": f"out of memory: {str(exc).splitlines()[0]}"}
        del out
        if cuda:  # measure the timed runs' peak, not the autotuner's (it allocates 256 MiB to flush L2)
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        times, cpu_times = [], []
        for _ in range(repeats):
            if cuda:
                start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                out = run()
                stop.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(stop) / 1000)
            else:
                wall, cpu = time.perf_counter(), time.process_time()
                out = run()
                times.append(time.perf_counter() - wall)
                cpu_times.append(time.process_time() - cpu)
            del out
        if cuda:
            peak = torch.cuda.max_memory_allocated() - base
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"median_s": statistics.median(times), "min_s": min(times),
            "cpu_s": statistics.median(cpu_times) if cpu_times else None, "peak_bytes": max(peak, 0),
            "repeats": repeats}


def run_worker(impl, shape, args) -> dict:
    command = [sys.executable, __file__, "--worker", impl, "--shapes", ",".join(map(str, shape)),
               "--dtype", args.dtype, "--device", args.device, "--repeats", str(args.repeats),
               "--lengths", args.lengths, "--threads", str(args.threads)]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": f"exit {proc.returncode}: {tail}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------ planning

def plan_skip(impl: str, shape, args) -> str | None:
    """Why a measurement is not run here (never faked), or None."""
    n_rows, seq_len, vocab_size, n_hidden = shape
    if impl == "triton" and args.device != "cuda":
        return "needs CUDA"
    if args.device == "cuda":
        return None  # let the GPU say out-of-memory itself
    logits_bytes = n_rows * seq_len * vocab_size * 4
    need = {"plain": 3 * logits_bytes, "gemm": logits_bytes, "twin": n_rows * seq_len * 4 * 4096}[impl]
    if need > 0.6 * available_memory_bytes():
        return f"needs ~{need / 2**30:.0f} GiB, {available_memory_bytes() / 2**30:.0f} GiB available"
    gflop = 2 * n_rows * seq_len * vocab_size * n_hidden / 1e9
    if gflop > args.max_gflop:
        return f"{gflop:.0f} GFLOP per run > --max-gflop {args.max_gflop:.0f} on CPU"
    return None


def fmt_time(result: dict) -> str:
    if "median_s" in result:
        return f"{result['median_s'] * 1000:10.1f} ms"
    return f"{'-':>13}"


def fmt_mem(result: dict) -> str:
    if "peak_bytes" in result:
        return f"{result['peak_bytes'] / 2**20:9.0f} MiB"
    return f"{'-':>13}"


def ratio(a: dict, b: dict) -> str:
    if "median_s" in a and "median_s" in b:
        return f"{a['median_s'] / b['median_s']:.2f}x"
    return "n/a"


# ------------------------------------------------------------------------------------ encoder end to end

RANDOM_BERT_BASE = "bert-base-random"
#: Share of the vocabulary a random model's document vector keeps: its decoder bias is shifted so
#: that about this share of the logits is positive, as sparse as a trained SPLADE model's output.
RANDOM_ACTIVE_SHARE = 0.005


def random_bert_base(folder: Path, texts: list[str]) -> str:
    """A BERT-base-sized masked LM (BertConfig's defaults: 12 layers, hidden 768, V 30522) with
    random weights and splade-tiny's tokenizer, saved under ``folder``; returns its path."""
    import shutil

    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from pipeline.encode.models import resolve_model

    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig()).eval()
    tiny = resolve_model("splade-tiny")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tiny, name), folder / name)
    sample = AutoTokenizer.from_pretrained(tiny)(texts[:8], truncation=True, max_length=256, padding=True,
                                                  return_tensors="pt")
    with torch.inference_mode():  # shift so that the max over a document's tokens is positive as often as wanted
        logits = model(**sample).logits.masked_fill(~sample["attention_mask"].bool()[..., None], float("-inf"))
        shift = torch.quantile(logits.amax(dim=1).flatten(), 1 - RANDOM_ACTIVE_SHARE)
        model.cls.predictions.bias -= shift
    model.save_pretrained(folder)
    return str(folder)


def bench_encoder(n_docs: int, args) -> None:
    import tempfile

    from pipeline.data.records import parse_record

    corpus = Path(args.data) / "corpus.jsonl"
    texts = []
    with open(corpus, encoding="utf-8") as f:
        for position, line in enumerate(f):
            texts.append(parse_record(json.loads(line), source=str(corpus), position=position)[1])
            if len(texts) == n_docs:
                break
    with tempfile.TemporaryDirectory() as scratch:
        model = random_bert_base(Path(scratch), texts) if args.model == RANDOM_BERT_BASE else args.model
        _time_encoder(model, texts, corpus, args)


def _time_encoder(model: str, texts: list[str], corpus: Path, args) -> None:
    import torch

    from pipeline.encode import SpladeEncoder
    from pipeline.encode.reference import encode_reference

    batch = args.batch_size
    encoder = SpladeEncoder(model, device=args.device, batch_size=batch)
    # Warm-up. On CUDA the whole set: Triton autotunes once per token-length bucket, which must
    # stay out of the timed pass.
    started = time.perf_counter()
    encoder.encode(texts if encoder.device.type == "cuda" else texts[:batch])
    print(f"warm-up: {time.perf_counter() - started:.1f} s (Triton autotuning and compiles included)", flush=True)

    def timed(fn):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        if encoder.device.type == "cuda":
            torch.cuda.synchronize()
        cpu_seconds.append(time.process_time() - cpu)
        return time.perf_counter() - wall, result

    cpu_seconds: list[float] = []

    def body_only():  # the encoder without the vocabulary projection
        lengths = [len(r) for r in encoder.tokenizer(texts, truncation=True, max_length=256)["input_ids"]]
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])  # the same length buckets
        for start in range(0, len(texts), batch):
            tokens = encoder.tokenize([texts[i] for i in order[start:start + batch]])
            encoder.hidden_states(tokens["input_ids"], tokens["attention_mask"])

    # The plain pipeline (naver/splade's expression on the full B x L x V logits) on the same
    # device and dtype as the encoder: the like-for-like peer. One pass untimed first (CUDA
    # context, cuBLAS handles).
    plain = lambda: encode_reference(model, texts, max_length=256, batch_size=batch,  # noqa: E731
                                     device=str(encoder.device), dtype=encoder.dtype)
    if encoder.device.type == "cuda":
        plain()
    t_ref, reference = timed(plain)
    t_ours, ours = timed(lambda: encoder.encode(texts))
    t_body, _ = timed(body_only)
    same = (abs(ours - reference).max() if ours.nnz else 0.0)
    dtype = str(encoder.dtype).removeprefix("torch.")
    print(f"\nEnd-to-end encoding, {args.model}, first {len(texts)} docs of {corpus.parent.name} "
          f"(max_length 256, batch {batch}, device {encoder.device}, dtype {dtype}):")
    c_ref, c_ours, c_body = cpu_seconds
    print(f"  plain pipeline (encode_reference, full B x L x V logits, {encoder.device} {dtype}): "
          f"{len(texts) / t_ref:8.1f} docs/s  ({t_ref:.1f} s wall, {c_ref:.1f} s cpu)")
    print(f"  SpladeEncoder (length buckets + fused head):              {len(texts) / t_ours:8.1f} docs/s  "
          f"({t_ours:.1f} s wall, {c_ours:.1f} s cpu)  = {t_ref / t_ours:.2f}x the plain pipeline "
          f"({c_ref / c_ours:.2f}x in cpu time)")
    print(f"  model body only, no vocabulary projection (tokenizes twice: not a floor where tokenizing dominates):"
          f"\n                                                            {len(texts) / t_body:8.1f} docs/s  "
          f"({t_body:.1f} s wall, {c_body:.1f} s cpu)")
    print(f"  max |ours - plain| = {same:.2e}, nnz {ours.nnz} vs {reference.nnz}, "
          f"{ours.nnz / len(texts):.0f} terms a document")


# ------------------------------------------------------------------------------------ main

def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=None,
                        help="B,L,V,H shapes ('none' for no head benchmark); default: " + " ".join(DEFAULT_SHAPES))
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                        help="input dtype (default: bfloat16 on cuda, float32 on cpu)")
    parser.add_argument("--device", default="cuda" if _cuda_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up (median reported)")
    parser.add_argument("--lengths", default="full", choices=["full", "ragged"],
                        help="mask: every token valid, or row lengths uniform in [L/4, L]")
    parser.add_argument("--impls", nargs="+", default=list(IMPLEMENTATIONS), choices=IMPLEMENTATIONS)
    parser.add_argument("--max-gflop", type=float, default=500.0, help="CPU: skip shapes above this per run")
    parser.add_argument("--encoder", type=int, default=0, metavar="N",
                        help="also time end-to-end encoding of the first N scifact docs")
    parser.add_argument("--batch-size", type=int, default=32, help="documents per encoder batch (--encoder)")
    parser.add_argument("--model", default="splade-tiny",
                        help=f"model for --encoder: an alias, a folder, or {RANDOM_BERT_BASE!r} (BERT-base size, "
                             "random weights, splade-tiny's tokenizer)")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "scifact"))
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads in the benchmark processes (default: torch's own choice)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.dtype is None:
        args.dtype = "bfloat16" if args.device == "cuda" else "float32"
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # a benchmark process, not library code
    spelled = [] if args.shapes == ["none"] else (args.shapes or DEFAULT_SHAPES)
    shapes = [tuple(int(x) for x in s.split(",")) for s in spelled]
    if any(len(s) != 4 for s in shapes):
        parser.error("each shape is B,L,V,H")

    if args.worker:
        print(json.dumps(worker(args.worker, shapes[0], args.dtype, args.device, args.repeats, args.lengths)))
        return

    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"machine: {machine_description(args.device)}")
    print(f"date:    {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    if args.device == "cpu":
        print(f"load:    {os.getloadavg()[0]:.1f} (1-min load average at start; the machine is shared)")
    print(f"dtype {args.dtype}, device {args.device}, masks {args.lengths}, median of {args.repeats} runs "
          "after a warm-up; peak = extra memory over the inputs (CPU: max RSS; CUDA: max allocated in the timed runs)")
    for shape in shapes:
        print(f"\nshape B={shape[0]} L={shape[1]} V={shape[2]} H={shape[3]}  "
              f"({2 * shape[0] * shape[1] * shape[2] * shape[3] / 1e9:.0f} GFLOP)")
        results = {}
        for impl in args.impls:
            reason = plan_skip(impl, shape, args)
            if reason:
                results[impl] = {"skipped": reason}
                print(f"  {impl:7s} skipped: {reason}", flush=True)
                continue
            results[impl] = run_worker(impl, shape, args)
            r = results[impl]
            note = r.get("error") or r.get("skipped") or ""
            cpu = f"  cpu {r['cpu_s'] * 1000:8.1f} ms" if r.get("cpu_s") else ""
            print(f"  {impl:7s} {fmt_time(r)}  peak {fmt_mem(r)}{cpu}  {note}", flush=True)
        fused = "triton" if "median_s" in results.get("triton", {}) else "twin"
        if fused in results:
            print(f"  ratios: plain/{fused} {ratio(results.get('plain', {}), results[fused])}, "
                  f"{fused}/gemm {ratio(results[fused], results.get('gemm', {}))}, "
                  f"plain/gemm {ratio(results.get('plain', {}), results.get('gemm', {}))}"
                  + (f", twin/triton {ratio(results.get('twin', {}), results['triton'])}" if fused == "triton" else ""))
    if args.encoder:
        bench_encoder(args.encoder, args)


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    main()
