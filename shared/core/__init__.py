"""Settings, database sessions and tables, states and vocabularies, errors, the Celery app and dispatch, safe paths and
names: the infrastructure both sides stand on."""
