"""Benchmarks: throughput, latency, memory, load time and size of artifacts vs torch."""
