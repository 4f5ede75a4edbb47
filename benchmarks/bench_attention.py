"""Attention benchmark (training fwd/bwd and rollout decode); logic in amago_fast.bench.attention.

Usage: python benchmarks/bench_attention.py [--no-gpu] [--no-cpu] [--repeats N] [--lengths L ...]
       [--precompile WORKERS]
Prints JSON. The GPU part is skipped (and says so) without CUDA.
"""

from amago_fast.bench.attention import main

if __name__ == "__main__":
    main()
