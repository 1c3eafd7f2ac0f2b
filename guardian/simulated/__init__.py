"""Simulated clouds for ``guardian demo``, the tests and the benchmarks.

``guardian.simulated.aws`` starts a moto server and seeds it with GPU instances and the
CloudWatch agent's GPU metrics (``moto_speedups`` makes long histories readable);
``guardian.simulated.gcp`` starts local fakes of the Compute, Monitoring and Billing APIs. The
real providers run against them end to end with no account. Nothing here is imported by the
daemon or the CLI's normal paths.
"""
