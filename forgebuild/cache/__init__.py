"""The cache: the content-addressed store (store.py) and its garbage collection (gc.py)."""
