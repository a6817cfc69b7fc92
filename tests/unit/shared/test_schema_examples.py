"""The example requests the API document shows (shared/schemas/examples.py) are requests the server accepts."""
import pytest

from shared.schemas.examples import REQUESTS

CASES = [(model, name, body) for model, examples in REQUESTS.items() for name, body in examples.items()]


@pytest.mark.parametrize("model, name, body", CASES, ids=[f"{m.__name__}-{n}" for m, n, _ in CASES])
def test_every_example_request_validates_with_its_model(model, name, body):
    model.model_validate(body)


def test_every_json_request_model_has_an_example():
    from shared.schemas import catalogs, jobs, models, training

    bodies = {jobs.ScoreRequest, jobs.EmbedRequest, training.TrainRequest, training.SweepRequest,
              training.ScheduleRequest, training.ScheduleUpdate, training.DatasetCheckRequest, models.AliasRequest,
              catalogs.IndexRequest, catalogs.DeletionRequest, catalogs.SimilarQuery, catalogs.SimilarBatch}
    assert bodies <= set(REQUESTS)
