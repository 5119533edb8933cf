"""The no-op handler of every benchmarked system; each reports its start through :mod:`bench.mark`."""
