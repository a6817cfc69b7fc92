"""Load a Keras file the safe way and print its input and output shapes as JSON.

Run as `python -m shared.models.model_inspect FILE` in a fresh process, so the web front never
imports TensorFlow itself. Exit code 0: {"inputs": [...], "outputs": [...]};
exit code 3: {"error": "..."} for a file imgq refuses.
"""
from __future__ import annotations

import json
import os
import sys
import zipfile


def load_keras_safely(path: str, *, compile: bool = False):
    """keras.models.load_model with safe_mode on; unsafe or unknown code becomes a clear ValueError.
    `compile=True` also restores the loss, metrics and optimizer state (training checkpoints)."""
    import keras

    try:
        return keras.models.load_model(path, compile=compile, safe_mode=True)
    except ValueError as exc:
        text = str(exc)
        if "safe_mode" in text or "unsafe" in text.lower():
            raise ValueError(
                "the model file asks to run arbitrary Python code (e.g. a Lambda layer); "
                "imgq loads models with safe_mode on and refuses it") from exc
        raise ValueError(f"cannot load the model file: {text.splitlines()[0][:300]}") from exc
    except TypeError as exc:
        raise ValueError(
            "the model file needs custom code imgq does not have "
            f"({str(exc).splitlines()[0][:300]})") from exc
    except Exception as exc:  # zip/h5 damage, wrong format
        raise ValueError(f"cannot load the model file: {type(exc).__name__}: {str(exc)[:300]}") from exc


def inspection_json(model) -> dict:
    def shapes(tensors):
        return [list(t.shape) for t in tensors]
    return {"inputs": shapes(model.inputs), "outputs": shapes(model.outputs)}


def main(argv: list[str]) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    if not zipfile.is_zipfile(argv[0]):  # Keras would call it "file not found"
        print(json.dumps({"error": "not a Keras 3 model file (a .keras file is a zip archive)"}))
        return 3
    try:
        info = inspection_json(load_keras_safely(argv[0]))
    except ValueError as exc:
        print(json.dumps({"error": str(exc)}))
        return 3
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
