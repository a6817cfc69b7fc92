"""Model code that needs no TensorFlow: a `.keras` file's layers read from its config, output interpretation, target
transforms, embedding space names and stored vectors; and `model_inspect`, the one module outside worker/ that imports
Keras (it runs in a process of its own, so the web front never loads TensorFlow)."""
