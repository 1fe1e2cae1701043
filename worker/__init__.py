"""The inference worker: Celery task bodies (classify chunks, schedule ticks, the reaper), its app and signals.

It imports the core `fracture` only, never `web` or `trainer`; tasks are sent by name through `fracture.queue`.
"""
