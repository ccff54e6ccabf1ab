"""Benchmarks for soci-wrapper (run by hand, never by the test suite); see benchmarks/README.md."""
