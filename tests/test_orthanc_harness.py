"""The tests' PACS itself: Orthanc from a generated configuration takes a C-STORE from dcmtk's storescu and shows the
instance through its REST API and through DICOMweb."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from dicom_files import dicom_file, small
from harness import Unavailable
from orthanc import running_orthanc
from PIL.Image import Image as PILImage

pytestmark = pytest.mark.slow


def test_orthanc_stores_what_storescu_sends_and_shows_it_by_rest_and_dicomweb(tmp_path: Path, xray: PILImage) -> None:
    storescu = shutil.which("storescu")
    if storescu is None:
        pytest.fail("dcmtk is not installed (apt-get install dcmtk)")
    sent = dicom_file(np.asarray(small(xray).convert("L")))
    path = tmp_path / "one.dcm"
    path.write_bytes(sent.data)
    try:
        with running_orthanc(tmp_path / "orthanc") as orthanc:
            done = subprocess.run([storescu, "-aet", "MODALITY", "-aec", orthanc.aet, "127.0.0.1",
                                   str(orthanc.dicom_port), str(path)], capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            [instance] = orthanc.instances()
            assert orthanc.tags(instance)["SOPInstanceUID"] == sent.sop_uid
            assert orthanc.file(instance)[128:132] == b"DICM"
            studies = orthanc.get("/dicom-web/studies")
            assert [s["0020000D"]["Value"][0] for s in studies] == [sent.study_uid]
    except Unavailable as e:
        pytest.fail(str(e))
