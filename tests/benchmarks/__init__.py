"""On-demand benchmarks (`make bench`). Each bench_*.py module has a main() that measures the
product and a baseline in the same run and prints the ratio. Nothing here is asserted."""
