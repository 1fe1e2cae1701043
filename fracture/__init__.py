"""Shared core: configuration, database, storage, preprocessing and the CNN."""
