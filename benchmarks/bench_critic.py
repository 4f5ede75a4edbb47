"""Critic ensemble / TD-target / EMA benchmark; logic in amago_fast.bench.critic.

Usage: python benchmarks/bench_critic.py [--quick] [--no-gpu] [--no-cpu] [--ptxas] [--repeats N]
       python benchmarks/bench_critic.py --profile   (GPU: per-kernel time of one fwd+bwd)
Prints JSON. The GPU part is skipped (and says so) without CUDA.
"""

from amago_fast.bench.critic import main

if __name__ == "__main__":
    main()
