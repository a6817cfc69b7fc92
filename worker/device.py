"""Pinning a worker process to one GPU, or to the CPU, before TensorFlow is imported."""
from __future__ import annotations

import os
import sys


def pin(gpu: int | None) -> None:
    """Set CUDA_VISIBLE_DEVICES. Must run before `import tensorflow` anywhere in the process."""
    if "tensorflow" in sys.modules:
        raise RuntimeError("TensorFlow is already imported; pin the device before importing it")
    os.environ["CUDA_VISIBLE_DEVICES"] = "" if gpu is None else str(gpu)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")


def configure_tensorflow():
    """Import TensorFlow with memory growth on the visible GPU (so it does not grab it all)."""
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised: growth was set by the env var
            pass
    return tf
