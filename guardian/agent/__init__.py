"""The node agent on a GPU machine: NVML sampling (``gpu/``), the poll loop (``loop.Agent``),
publishing to Prometheus / CloudWatch / Cloud Monitoring, autostop, the run-dir status file and
the cloud metadata that says which instance this is. Nothing is re-exported.
"""
