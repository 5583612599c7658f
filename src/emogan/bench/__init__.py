"""`emogan bench ...`: measurements of speed and quality goals, reported in BENCHMARKS.md."""
