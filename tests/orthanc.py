"""A real PACS for the DICOM tests: Debian's Orthanc (with its DICOMweb plugin) on free ports, from a generated
configuration, started and stopped by its process id (the package's own service is never used)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from harness import Proc, Unavailable, free_port, start_proc, wait_for

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


@dataclass
class Orthanc:
    """A running Orthanc: its AE title, DICOM port, REST root and process."""

    aet: str
    dicom_port: int
    http_port: int
    proc: Proc

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get(self, path: str, **kwargs: Any) -> Any:
        """GET a REST path (JSON answers decoded)."""
        response = requests.get(f"{self.url}{path}", timeout=30, **kwargs)
        response.raise_for_status()
        return response.json() if "json" in response.headers.get("Content-Type", "") else response.content

    def instances(self) -> list[str]:
        """The Orthanc ids of every instance it holds."""
        ids: list[str] = self.get("/instances")
        return ids

    def tags(self, instance: str) -> dict[str, Any]:
        """An instance's main tags, by name."""
        found: dict[str, Any] = self.get(f"/instances/{instance}/simplified-tags")
        return found

    def file(self, instance: str) -> bytes:
        """An instance's DICOM file."""
        data: bytes = self.get(f"/instances/{instance}/file")
        return data


def _alive(orthanc: Orthanc) -> bool:
    orthanc.proc.expect_alive()
    try:
        return requests.get(f"{orthanc.url}/system", timeout=2).ok
    except requests.RequestException:
        return False


@contextmanager
def running_orthanc(workdir: Path, aet: str = "ORTHANC", modalities: Mapping[str, tuple[str, str, int]] | None = None,
                    lua: str | None = None, stable_age_s: int = 2, dicom_port: int | None = None,
                    http_port: int | None = None) -> Iterator[Orthanc]:
    """Start Orthanc on free ports (or the ones given: a restart keeps its address), storing under `workdir`.

    `modalities`: name -> (AE title, host, port) it may send to; `lua`: a script (e.g. an OnStableStudy rule).
    Raises Unavailable when Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)."""
    exe = shutil.which("Orthanc")
    if exe is None:
        raise Unavailable("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)")
    workdir.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "Name": "fracture-tests", "StorageDirectory": str(workdir / "db"), "IndexDirectory": str(workdir / "db"),
        "HttpPort": http_port or free_port(), "DicomPort": dicom_port or free_port(), "DicomAet": aet,
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "HttpServerEnabled": True,
        "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True, "DicomAlwaysAllowEcho": True,
        "StableAge": stable_age_s, "DicomModalities": {k: list(v) for k, v in (modalities or {}).items()},
        "Plugins": [str(DICOMWEB_PLUGIN)] if DICOMWEB_PLUGIN.exists() else [],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    if lua is not None:
        script = workdir / "rules.lua"
        script.write_text(lua)
        config["LuaScripts"] = [str(script)]
    (workdir / "orthanc.json").write_text(json.dumps(config, indent=1))
    proc = start_proc("orthanc", [exe, str(workdir / "orthanc.json")], os.environ, workdir)
    orthanc = Orthanc(aet, config["DicomPort"], config["HttpPort"], proc)
    try:
        wait_for(lambda: _alive(orthanc), 60, "Orthanc to answer /system")
        yield orthanc
    finally:
        proc.stop()
