"""Response bodies: one pydantic model per answer of the HTTP API, one module per domain, mirroring the request
modules beside them: `common` (the error shape, health, tokens), `jobs` (a job of each kind, results, epochs),
`models` (registry), `training` (schedules, sweeps, the dataset check report) and `catalogs` (catalogs, deletions,
similar-image answers).

Invariants:
- The models describe what the serializers of shared/services (`*_json`) return today, key for key: every model
  refuses unknown keys (`extra="forbid"`), so a serializer that grows a key fails until its model, and so the API
  document (web/openapi.py), names it. A key a serializer sets only sometimes has a default here and is left out
  of the answer when the serializer left it out (the web front dumps with `exclude_unset`).
- Conformance is enforced at run time: every JSON answer of a handler goes through web/http.respond, which
  validates the service's dict with its model and dumps it back (see web/openapi.py for why and what it costs).
- Timestamps are `Timestamp`: parsed (so a malformed one fails) and written back exactly as the services wrote
  them (`isoformat()`), so validation never changes the wire.
- Free-form parts (a job's `source`, a training's `data`, `comparison` and stored `request`, a version's
  `lineage`, an index's `params`) are JSON objects described in words: they hold what the worker recorded.
- Like the request models, this package imports shared/core, images, models and search, never shared/services.
"""
