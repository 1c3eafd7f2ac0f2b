"""AWS: EC2 discovery, CloudWatch GPU metrics in batches of 500 queries, stop; the only code
that calls boto3 (imported lazily). ``provider.AwsProvider`` is the entry point; it is not
re-exported here, so that importing a helper (the simulator reads ``discovery``) stays cheap.
"""
