"""GCP: Compute aggregated lists, one Cloud Monitoring query per project and metric, stop; the
only code that calls the Google clients (imported lazily). ``provider.GcpProvider`` is the entry
point; it is not re-exported here, so that importing a helper stays cheap.
"""
