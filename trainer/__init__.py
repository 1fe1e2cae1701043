"""The trainer: dataset scan and audit, grouped split, training loop, metrics, plots, model card, its Celery task.

It imports the core `fracture` only, never `web` or `worker`; run state is written through `fracture.trainings`.
"""
