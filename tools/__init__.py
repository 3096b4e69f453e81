"""The edgeloop command line, benchmarks and the demo model builder."""
