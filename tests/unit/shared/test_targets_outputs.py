import numpy as np
import pytest

from shared.images.imaging import Geometry
from shared.models import targets
from shared.models.outputs import class_probabilities, interpret, output_columns


@pytest.mark.parametrize("transform", [
    {"kind": "none"}, {"kind": "log1p"}, {"kind": "standardise", "mean": 40.0, "std": 12.5},
    {"kind": "log1p_arctan", "scale": 10.0},
])
def test_inverse_undoes_forward(transform):
    y = np.array([0.0, 1.0, 37.0, 1234.0, 98765.0])
    t = targets.validate(transform)
    np.testing.assert_allclose(targets.inverse(t, targets.forward(t, y)), y, rtol=1e-9, atol=1e-9)


def test_log1p_inverse_is_expm1():
    assert targets.inverse({"kind": "log1p"}, np.array([np.log(101.0)]))[0] == pytest.approx(100.0)


@pytest.mark.parametrize("bad, message", [
    ({"kind": "sqrt"}, "unknown target transform 'sqrt'"),
    ({"kind": "standardise", "mean": 1}, "'standardise': std: Field required"),
    ({"kind": "standardise", "mean": 1, "std": 0}, "std: Input should be greater than 0"),
    ({"kind": "log1p", "scale": 2}, "scale: Extra inputs are not permitted"),
])
def test_bad_transforms(bad, message):
    with pytest.raises(ValueError, match=message):
        targets.validate(bad)


def test_regression_outputs_are_inverted_and_named():
    rows = interpret("regression", np.array([[np.log1p(9.0)], [0.0]]), output_names=["pageviews"],
                     class_names=None, target_transform={"kind": "log1p"})
    assert rows[0]["pageviews"] == pytest.approx(9.0)
    assert rows[1] == {"pageviews": 0.0}


def test_classification_probabilities_logits_and_sigmoid():
    probs = class_probabilities(np.array([[0.2, 0.5, 0.3], [2.0, -1.0, 0.0]]), 3)
    np.testing.assert_allclose(probs[0], [0.2, 0.5, 0.3])
    e = np.exp([2.0, -1.0, 0.0])
    np.testing.assert_allclose(probs[1], e / e.sum())
    binary = class_probabilities(np.array([[0.9], [0.1]]), 2)
    np.testing.assert_allclose(binary, [[0.1, 0.9], [0.9, 0.1]])


def test_classification_rows_name_the_best_class():
    rows = interpret("classification", np.array([[0.1, 0.7, 0.2]]), output_names=None,
                     class_names=["shoes", "bags", "hats"], target_transform={"kind": "none"})
    assert rows[0]["label"] == "bags"
    assert rows[0]["confidence"] == pytest.approx(0.7)
    assert rows[0]["p:hats"] == pytest.approx(0.2)
    assert list(rows[0]) == output_columns("classification", None, ["shoes", "bags", "hats"])


def test_keypoints_come_back_in_original_pixels():
    # a 200x100 image letterboxed into 50x50: scale 0.25, 12 px of padding above and below
    geom = Geometry(orig_width=200, orig_height=100, scale_x=0.25, scale_y=0.25, pad_x=0.0, pad_y=12.0,
                    input_width=50, input_height=50)
    x_norm, y_norm = (100 * 0.25) / 50, (40 * 0.25 + 12) / 50
    rows = interpret("keypoints", np.array([[x_norm, y_norm]]), output_names=["nose"], class_names=None,
                     target_transform={"kind": "none"}, geometries=[geom])
    assert rows[0]["nose_x"] == pytest.approx(100.0)
    assert rows[0]["nose_y"] == pytest.approx(40.0)
