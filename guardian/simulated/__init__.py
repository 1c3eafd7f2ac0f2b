"""Simulated clouds for ``guardian demo``, the tests and the benchmarks.

``guardian.simulated.aws`` starts a moto server and seeds it with GPU instances and the
CloudWatch agent's GPU metrics, so the real AWS provider can run end to end with no account.
Nothing here is imported by the daemon or the CLI's normal paths.
"""
