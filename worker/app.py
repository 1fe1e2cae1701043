"""Entry module for `celery -A worker.app worker|beat`."""

from worker.celery_app import make_celery

app = make_celery()
