"""Entry module for the inference worker and beat: `celery -A worker.app worker -Q inference,interactive` / `beat`."""

from fracture import logs
from worker.celery_app import make_celery

logs.use_in_celery("worker")  # LOG_FORMAT's lines, with each task's ids; "beat" when this app runs beat
app = make_celery()
