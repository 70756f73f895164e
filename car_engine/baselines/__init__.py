"""Plain reference implementations that tests and benchmarks compare the engine against."""
