"""Domain services: score, train and import jobs, their one submission path, the model registry, schedules, tokens and
quotas."""
