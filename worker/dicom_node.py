"""The DICOM node: a C-STORE SCP that takes X-rays from the PACS, and the loop that makes quiet studies jobs.

`python -m worker.dicom_node` (what `fracture up` runs when DICOM_PORT is set, and docker-compose's dicom-node).
Only the AE titles of DICOM_PEERS may associate. Each instance is written to storage and recorded in the database
before the sender hears "success"; anything that goes wrong before that answers a failure, so the sender keeps the
instance and sends it again. The node never classifies: the loop hands each study that went quiet for
DICOM_STUDY_QUIET_S to the inference workers as a job, as an upload would be.

The loop is a thread of this process rather than a beat entry: the node is the one process that exists wherever
instances arrive, it picks up on start what a killed node left, and making a study's job is safe to race (two
nodes claim its instances in one transaction each; the second finds them taken).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

from fracture import dicom_intake, logs
from fracture.config import Settings, get_settings
from fracture.db import session_scope
from fracture.queue import make_app
from fracture.storage import Storage

if TYPE_CHECKING:
    from pynetdicom import AE
    from pynetdicom.events import Event

log = logging.getLogger("fracture.dicom_node")

SUCCESS = 0x0000
# PS3.4 GG.4 (Storage Service Class): "Refused: Out of Resources" makes a sender keep the instance and retry;
# "Error: Cannot understand" says the data set itself is wrong.
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
# PS3.7 C.5: a caller not among DICOM_PEERS (its association is rejected before it can get here).
NOT_AUTHORIZED = 0x0124
READY_LINE = "DICOM node {title} listening on port {port}"


class Node:
    """The C-STORE handler and the loop over quiet studies, for one node's settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.storage = Storage(settings.storage_dir)
        self.peers = frozenset(p.ae_title for p in settings.dicom_peers)
        self.stop = threading.Event()

    def handle_store(self, event: Event) -> int:
        """Store and record one instance, then answer; never classify."""
        calling = str(event.assoc.requestor.ae_title).strip()
        if calling not in self.peers:
            return NOT_AUTHORIZED
        try:
            data = event.encoded_dataset()
            with session_scope(self.settings.database_url) as session:
                outcome = dicom_intake.receive(session, self.storage, data, calling)
        except dicom_intake.NotAnInstance as e:
            log.warning("refused an instance from %s: %s", calling, e)
            return CANNOT_UNDERSTAND
        except Exception:  # the database or the disk: the sender keeps the instance and tries again
            log.exception("could not keep an instance from %s; answered out of resources", calling)
            return OUT_OF_RESOURCES
        log.info("%s instance from %s", outcome, calling)
        return SUCCESS

    def handle_rejected(self, event: Event) -> None:
        requestor = event.assoc.requestor
        title = str(requestor.ae_title).strip()
        why = "too many associations at once" if title in self.peers else "not in DICOM_PEERS"
        log.warning("rejected an association from AE title %r at %s: %s", title, requestor.address, why)

    def run_loop(self) -> None:
        """Every few seconds, make the quiet studies jobs (until `stop` is set)."""
        app = make_app(self.settings)
        interval = max(0.5, min(5.0, self.settings.dicom_study_quiet_s / 4))
        while not self.stop.is_set():
            try:
                dicom_intake.start_stable_studies(self.settings, app)
            except Exception:  # the database is down, say: the instances wait, and the next pass tries again
                log.exception("could not turn quiet studies into jobs")
            self.stop.wait(interval)


def application_entity(settings: Settings) -> AE:
    """Our AE: every storage SOP class in every transfer syntax (compressed ones too), Verification, and only the
    calling AE titles of DICOM_PEERS."""
    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title=settings.dicom_ae_title)
    for context in AllStoragePresentationContexts:
        assert context.abstract_syntax is not None
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    ae.require_calling_aet = [p.ae_title for p in settings.dicom_peers]
    return ae


def serve(settings: Settings) -> None:
    """Run the node until SIGTERM or SIGINT."""
    from pynetdicom import evt

    node = Node(settings)
    ae = application_entity(settings)
    handlers: list[Any] = [(evt.EVT_C_STORE, node.handle_store), (evt.EVT_REJECTED, node.handle_rejected)]
    server = ae.start_server(("", settings.dicom_port), block=False, evt_handlers=handlers)
    assert server is not None  # non-blocking: the server runs in its own thread
    loop = threading.Thread(target=node.run_loop, name="quiet-studies", daemon=True)
    loop.start()

    def on_signal(_signum: int, _frame: object) -> None:
        node.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    peers = ", ".join(str(p) for p in settings.dicom_peers)
    log.info(READY_LINE.format(title=settings.dicom_ae_title, port=settings.dicom_port) + " (peers: %s)", peers)
    node.stop.wait()
    log.info("stopping")
    server.shutdown()
    loop.join(timeout=30)


def main() -> int:
    settings = get_settings()
    logs.configure(settings, "dicom-node")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    if not settings.dicom_port:
        log.error("DICOM_PORT is not set: no DICOM node to run")
        return 2
    if not settings.dicom_peers:
        log.error("DICOM_PEERS names no peer: the node would accept no one (AE@host:port, comma-separated)")
        return 2
    serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
