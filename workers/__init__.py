"""Processing: the Celery app, its tasks (ingest, maintenance, analysis) and the CLI to run workers."""
