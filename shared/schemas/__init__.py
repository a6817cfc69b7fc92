"""Request bodies, one pydantic model per body, one module per domain: `jobs` (score and embed), `training`
(train, sweep, schedule, dataset check), `catalogs` (index, deletions, similar-image queries) and `models`
(model import form, alias).

Invariants:
- Every model refuses unknown fields (`extra="forbid"`) and is typed down to its leaves: no `dict`, `Any` or bare
  `list`, so a misspelled key or a wrong value anywhere is a ValidationError naming its field path (a 400 in
  web/errors.py) before anything is stored or queued.
- Words (tasks, optimizers, augmentations, metrics...) come from shared/core/vocab.py, which the worker's code
  uses too; every string is bounded by its column, or by a small multiple of any sane value.
- This package imports shared/core, images, models and search, never shared/services: services take these models.
"""
