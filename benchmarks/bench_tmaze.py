"""Passive T-Maze wall clock to solved (logic in amago_fast.bench.tmaze); prints JSON."""

from amago_fast.bench.tmaze import main

if __name__ == "__main__":
    main()
