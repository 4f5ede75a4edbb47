"""Learner updates/s vs a reference-style baseline (logic in amago_fast.bench.update); JSON."""

from amago_fast.bench.update import main

if __name__ == "__main__":
    main()
