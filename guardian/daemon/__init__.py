"""The service: the scheduled cycle (``service.Daemon``), enforcement, the state store and its
Alembic migrations, notifications and their texts, sd_notify and the Prometheus endpoint.
Nothing is re-exported: ``guardian history`` needs the store without the scheduler.
"""
