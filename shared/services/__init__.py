"""Domain services: score, embed, train, import and index jobs as they are created, described and recorded (their
execution is worker/'s), their one submission path, the model registry, schedules, catalogs and similar-image
queries, tokens and quotas."""
