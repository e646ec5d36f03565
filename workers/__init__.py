"""Celery app, tasks and the `iad` command line: thin glue from a job row to ad_core."""
