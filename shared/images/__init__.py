"""Image bytes to model inputs, the decoded-image cache, manifests and training datasets."""
