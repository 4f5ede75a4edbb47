"""Trajectory buffer benchmark (logic in amago_fast/bench/buffer.py); prints JSON."""

from amago_fast.bench.buffer import main

if __name__ == "__main__":
    main()
