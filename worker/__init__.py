"""The inference worker: Celery task bodies (classify chunks, schedule ticks, the reaper), its app and signals.

It imports the core `fracture` only, never `web` or `trainer`; tasks are sent by name through `fracture.queue`.
"""

from fracture.ml.threads import wait_passively

# Before anything imports torch: the network's threads share the cores with the decode threads (fracture.ml.threads).
wait_passively()
