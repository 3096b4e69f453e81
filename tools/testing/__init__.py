"""Harnesses for the tests and benchmarks: a Mosquitto of our own, a fault-injecting TCP proxy,
a model with fault switches. Never imported by the runtime."""
