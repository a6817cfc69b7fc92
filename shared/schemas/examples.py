"""Example requests the API document shows beside each request body and path parameter (Swagger UI fills its forms
with them; schemathesis sends them first), in the README's words: a regression model `pageviews`, an embedding model
`embedder`, a catalog `shop` whose items are `item-1`, `item-2`..., a schedule `nightly`.

Invariant: every example validates with its model (tests/unit/shared/test_schema_examples.py), so the document never
shows a request the server refuses for its shape.
"""
from __future__ import annotations

from pydantic import BaseModel

from shared.schemas.catalogs import DeletionRequest, IndexRequest, SimilarBatch, SimilarQuery
from shared.schemas.jobs import EmbedRequest, ScoreRequest
from shared.schemas.models import AliasRequest
from shared.schemas.training import (
    DatasetCheckRequest,
    ScheduleRequest,
    ScheduleUpdate,
    SweepRequest,
    TrainRequest,
)

DATASET = {"path": "crawl/2026-11-23/items.csv", "id_column": "sku", "image_column": "photo",
           "target_columns": ["pageviews"]}
FINE_TUNE = {"model": "pageviews", "task": "regression", "dataset": DATASET, "base": {"version": "pageviews"},
             "target_transform": "log1p", "epochs": 5, "gate": {"metric": "mae", "min_improvement": 0.01}}

REQUESTS: dict[type[BaseModel], dict[str, dict]] = {
    ScoreRequest: {
        "items": {"model": "pageviews", "items": [{"id": "sku-1", "uri": "crawl/2026-11-23/sku-1.jpg"}]},
        "manifest": {"model": "pageviews@production", "manifest": "crawl/2026-11-23/items.csv", "id_column": "sku",
                     "image_column": "photo"},
        "upload": {"model": "pageviews", "upload": "5f0c8a1e2b3d4c5e6f708192a3b4c5d6"},
    },
    EmbedRequest: {
        "items": {"model": "embedder", "catalog": "shop",
                  "items": [{"id": "item-9", "uri": "shop/item-9.jpg", "category": "coat"}]},
    },
    TrainRequest: {
        "fine-tune": FINE_TUNE,
        "architecture": {"model": "cats", "task": "classification", "input_size": 96, "epochs": 10,
                         "dataset": {"path": "cats/items.csv", "label_column": "label"},
                         "base": {"architecture": "mobilenet_v3_small"}},
    },
    SweepRequest: {
        "learning-rates": {"base": FINE_TUNE, "grid": {"optimizer.learning_rate": [0.001, 0.0003]}},
    },
    ScheduleRequest: {
        "nightly": {"name": "nightly", "cron": "0 2 * * *", "timezone": "Europe/Berlin", "model": "pageviews",
                    "train": {"task": "regression", "base": {"version": "pageviews"}, "epochs": 3,
                              "dataset": {**DATASET, "path": "crawl/{date:%Y-%m-%d}/items.csv",
                                          "added_since_last_run": True}},
                    "gate": {"metric": "mae"}},
    },
    ScheduleUpdate: {"pause": {"enabled": False}},
    DatasetCheckRequest: {"sample": {**DATASET, "sample": 500}},
    AliasRequest: {"version": {"version": 1}},
    IndexRequest: {"build": {"mode": "build", "params": {"kind": "exact"}}, "delta": {"mode": "delta"}},
    DeletionRequest: {"ids": {"ids": ["item-1", "item-2"]}},
    SimilarQuery: {"more-like-this": {"catalog": "shop", "item_id": "item-3", "k": 5}},
    SimilarBatch: {"two": {"queries": [{"catalog": "shop", "item_id": "item-3", "k": 3},
                                       {"catalog": "shop", "item_id": "item-4", "k": 3}]}},
}

PATH_PARAMETERS = {"name": "pageviews", "alias": "production", "catalog": "shop", "item_id": "item-1",
                   "schedule_id": 1}
