"""Collection throughput benchmark (logic in amago_fast.bench.collect); prints JSON."""

from amago_fast.bench.collect import main

if __name__ == "__main__":
    main()
