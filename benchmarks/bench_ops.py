"""Compiled feature-cache ops (automl_tl._C) against their pure-torch reference, side by side.

    .venv/bin/python benchmarks/bench_ops.py [--threads 2] [--markdown docs/ops_bench.md]

Both sides are called through their public Python functions
(`automl_tl.features.ops.gather_dequantize` vs `ref_gather_dequantize`, ...), the way training
calls them.
Calls of the two alternate one by one and the median call time is reported (microseconds),
with the ratio reference / compiled (> 1: compiled is faster).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from automl_tl.features import ops


def _median_us(fns: list[Callable[[], object]], samples: int) -> list[float]:
    """Median time of one call of each function in microseconds.

    Calls alternate between the functions one by one, so load from other processes (this
    machine's 2 cores are shared) falls on both alike; the median drops calls that a
    preemption hit.
    """
    for fn in fns:  # warm up caches, thread pool, allocator
        for _ in range(max(3, samples // 10)):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    clock = time.perf_counter
    for _ in range(samples):
        for i, fn in enumerate(fns):
            t0 = clock()
            fn()
            times[i].append(clock() - t0)
    return [statistics.median(t) * 1e6 for t in times]


def _cycle(items: list) -> Callable[[], object]:
    """A function returning the next item of `items` on each call, round and round."""
    state = {"i": -1}

    def nxt():
        state["i"] = (state["i"] + 1) % len(items)
        return items[state["i"]]

    return nxt


def _gather_cases(stores: list[int], dim: int, batches: list[int], seed: int):
    g = torch.Generator().manual_seed(seed)
    for n in stores:
        x = torch.randn(n, dim, generator=g)
        fmts = {"fp16": (ops.ref_quantize_fp16(x), None), "int8": ops.ref_quantize_int8(x)}
        for fmt, (values, scales) in fmts.items():
            for b in batches:
                # Fresh random rows per call, as an epoch's shuffled batches are.
                idx = _cycle([torch.randint(0, n, (b,), generator=g) for _ in range(64)])
                name = f"gather_dequantize {fmt} N={n} B={b}"
                yield (
                    name,
                    lambda v=values, s=scales, i=idx: ops.gather_dequantize(v, s, i()),
                    lambda v=values, s=scales, i=idx: ops.ref_gather_dequantize(v, s, i()),
                )


def _quantize_cases(rows: list[int], dim: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    for n in rows:
        x = torch.randn(n, dim, generator=g)
        yield (
            f"quantize_fp16 {n}x{dim}",
            lambda x=x: ops.quantize_fp16(x),
            lambda x=x: ops.ref_quantize_fp16(x),
        )
        yield (
            f"quantize_int8 {n}x{dim}",
            lambda x=x: ops.quantize_int8(x),
            lambda x=x: ops.ref_quantize_int8(x),
        )


def _markdown(rows: list[tuple[str, float, float]], header: str) -> str:
    lines = [
        header,
        "",
        "| op | compiled (us) | reference (us) | reference / compiled |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {name} | {c:.1f} | {r:.1f} | {r / c:.2f}x |" for name, c, r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    p.add_argument("--stores", type=int, nargs="+", default=[5000, 20000], help="rows stored")
    p.add_argument("--batches", type=int, nargs="+", default=[32, 256], help="rows per batch")
    p.add_argument("--quantize-rows", type=int, nargs="+", default=[256, 4096])
    p.add_argument("--dim", type=int, default=1280, help="feature width D (default 1280)")
    p.add_argument("--samples", type=int, default=2000, help="timed calls per op (gather)")
    p.add_argument("--markdown", type=Path, help="also write the table as markdown here")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    if ops.backend() == "torch":
        print(f"compiled ops not in use ({ops.backend_detail()}); build them with: make")
        return 1
    header = (
        f"automl-tl ops: {ops.backend()} vs pure-torch reference; torch {torch.__version__}, "
        f"{args.threads} threads, D={args.dim}, median of {args.samples} alternating calls"
    )
    print(header)
    print(f"{'op':<40} {'compiled us':>12} {'reference us':>13} {'ratio':>7}")
    results = []
    cases = list(_gather_cases(args.stores, args.dim, args.batches, seed=0))
    cases += list(_quantize_cases(args.quantize_rows, args.dim, seed=1))
    for name, compiled, reference in cases:
        samples = args.samples if name.startswith("gather") else max(20, args.samples // 10)
        c, r = _median_us([compiled, reference], samples)
        results.append((name, c, r))
        print(f"{name:<40} {c:>12.1f} {r:>13.1f} {r / c:>6.2f}x", flush=True)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(_markdown(results, header))
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
