"""Entry module for the inference worker and beat: `celery -A worker.app worker -Q inference,interactive` / `beat`."""

from worker.celery_app import make_celery

app = make_celery()
