"""Model code that needs no TensorFlow at import: architectures, inspection (in its own process), output interpretation
and target transforms."""
