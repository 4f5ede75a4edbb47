"""Longer learning curves for docs/LEARNING.md (logic in amago_fast.bench.curves).

    python benchmarks/learning_curves.py list                 # the exact train commands
    python benchmarks/learning_curves.py run [NAME...]        # nice'd, time-limited, 2 at once
    python benchmarks/learning_curves.py summary              # JSON: evals, steps, CPU, wall
    python benchmarks/learning_curves.py plot --out docs/figures
"""

from amago_fast.bench.curves import main

if __name__ == "__main__":
    main()
