"""Collection throughput benchmark (logic in amago_fast.bench.collect); prints JSON.

Usage: python benchmarks/bench_collect.py [--envs ...] [--num-envs ...] [--modes sync async]
       python benchmarks/bench_collect.py --context-only [--context-device cuda]
(`--help` lists the rest.)
"""

from amago_fast.bench.collect import main

if __name__ == "__main__":
    main()
