"""The core: settings, database models and the state of jobs and training runs, the queue's contract, storage,
archive and image reading, preprocessing, the network, checkpoints, inference and the model registry.

It imports nothing from `web`, `worker`, `trainer` or `launcher` (checked by import-linter: `make lint`).
"""
