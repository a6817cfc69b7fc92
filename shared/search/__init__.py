"""Similar-image search: vector indexes of a catalog's embeddings (FAISS) and the in-memory holder of their versions."""
