"""The DICOM objects a PACS is sent back, built from real X-rays sent as DICOM: one Structured Report per study
(every image referenced, its finding, probability and out-of-distribution flag) and a Secondary Capture with the
heatmap burned in; read back with pydicom and highdicom, and checked by dicom3tools' dciodvfy."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from dicom_files import PATIENT_ID, PATIENT_NAME, dicom_file, png_bytes, small
from PIL import Image
from pydicom import Dataset, dcmread, uid
from pydicom.sr.codedict import codes
from skipping import skip_or_fail

from fracture.dicom_captures import CAPTURE_SERIES_DESCRIPTION, build_heatmap_capture, composite_overlay
from fracture.dicom_reports import LOCAL_SCHEME, REPORT_SERIES_DESCRIPTION, ImageFinding, build_report, is_our_report

MODEL, VERSION, THRESHOLD = "resnet18-fracture", "v7", 0.42
FRACTURE = hd.sr.CodedConcept("125605004", "SCT", "Fracture of bone")
UNLIKE = hd.sr.CodedConcept("OOD", LOCAL_SCHEME, "Unlike the training data")
OOD_SCORE = hd.sr.CodedConcept("OODSCORE", LOCAL_SCHEME, "Out-of-distribution score")


@pytest.fixture(scope="module")
def inputs(xray: Image.Image) -> list[Dataset]:
    """Three DX images of one study, one series, made from a real X-ray (flipped, so each differs)."""
    study, series = uid.generate_uid(), uid.generate_uid()
    pixels = np.asarray(small(xray))
    variants = [pixels, pixels[:, ::-1], pixels[::-1, :]]
    made = [dicom_file(np.ascontiguousarray(p), StudyInstanceUID=study, SeriesInstanceUID=series, InstanceNumber=n,
                       PatientSex="F", StudyDate="20261204", StudyTime="101500", AccessionNumber="ACC-1",
                       StudyID="1", Manufacturer="Acme DR", PatientOrientation=["L", "F"], ImageLaterality="L")
            for n, p in enumerate(variants, start=1)]
    return [dcmread(io.BytesIO(m.data)) for m in made]


@pytest.fixture(scope="module")
def findings(inputs: list[Dataset]) -> list[ImageFinding]:
    """Made-up results: one fractured (and unlike the training data), one not, one that failed."""
    return [
        ImageFinding(inputs[0], "fractured", 0.912345678, in_distribution=False, ood_score=3.25),
        ImageFinding(inputs[1], "not fractured", 0.0731, in_distribution=True, ood_score=0.5),
        ImageFinding(inputs[2], None, None, error="pixel data could not be decoded"),
    ]


@pytest.fixture(scope="module")
def report_file(findings: list[ImageFinding], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sr") / "report.dcm"
    build_report(findings, MODEL, VERSION, THRESHOLD, institution_name="Test Hospital").save_as(path)
    return path


@pytest.fixture(scope="module")
def overlay_png(inputs: list[Dataset]) -> bytes:
    """An RGBA heatmap overlay: a red blob, transparent elsewhere, at a quarter of the image's size."""
    rows, cols = inputs[0].Rows // 4, inputs[0].Columns // 4
    y, x = np.mgrid[0:rows, 0:cols]
    blob = np.exp(-((y - rows / 2) ** 2 + (x - cols / 3) ** 2) / (2 * (cols / 8) ** 2))
    rgba = np.zeros((rows, cols, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, (blob * 200).astype(np.uint8)
    return png_bytes(Image.fromarray(rgba, "RGBA"))


@pytest.fixture(scope="module")
def capture_file(inputs: list[Dataset], overlay_png: bytes, tmp_path_factory: pytest.TempPathFactory) -> Path:
    rgb = composite_overlay(inputs[0].pixel_array.astype(np.uint8), overlay_png)
    path = tmp_path_factory.mktemp("sc") / "capture.dcm"
    build_heatmap_capture(inputs[0], rgb, MODEL, VERSION).save_as(path)
    return path


def test_report_lists_every_image_with_its_result(report_file: Path, inputs: list[Dataset]) -> None:
    sr = hd.sr.srread(report_file)
    groups = sr.content.get_image_measurement_groups()
    assert len(groups) == 3
    referenced = [(g.source_images[0].referenced_sop_class_uid, g.source_images[0].referenced_sop_instance_uid)
                  for g in groups]
    assert referenced == [(ds.SOPClassUID, ds.SOPInstanceUID) for ds in inputs]
    assert {i[2] for i in sr.get_evidence()} == {ds.SOPInstanceUID for ds in inputs}

    fractured, not_fractured, failed = groups
    assert fractured.get_qualitative_evaluations(FRACTURE)[0].value == codes.SCT.Present
    assert not_fractured.get_qualitative_evaluations(FRACTURE)[0].value == codes.SCT.Absent
    assert failed.get_qualitative_evaluations(FRACTURE)[0].value == codes.SCT.NotEvaluated
    for group, probability in ((fractured, 0.912345678), (not_fractured, 0.0731)):
        (num,) = group.get_measurements(codes.DCM.Probability)
        assert "probability" in num.name.meaning.lower()
        assert num.value == pytest.approx(probability, abs=1e-6)
        assert num.unit == codes.UCUM.NoUnits
    assert failed.get_measurements() == []

    assert fractured.get_qualitative_evaluations(UNLIKE)[0].value == codes.SCT.Yes
    assert not_fractured.get_qualitative_evaluations(UNLIKE)[0].value == codes.SCT.No
    assert failed.get_qualitative_evaluations(UNLIKE) == []
    assert fractured.get_measurements(OOD_SCORE)[0].value == pytest.approx(3.25)
    comments = hd.sr.utils.find_content_items(failed[0], name=codes.DCM.Comment)
    assert comments[0].TextValue == "Not classified: pixel data could not be decoded"

    algorithm = hd.sr.utils.find_content_items(fractured[0], name=codes.DCM.AlgorithmVersion)
    assert algorithm[0].TextValue == VERSION


def test_report_belongs_to_the_study_in_a_new_unverified_series(report_file: Path, inputs: list[Dataset]) -> None:
    ds = dcmread(report_file)
    assert ds.SOPClassUID == uid.ComprehensiveSRStorage and ds.Modality == "SR"
    assert ds.StudyInstanceUID == inputs[0].StudyInstanceUID
    assert ds.SeriesInstanceUID not in {i.SeriesInstanceUID for i in inputs}
    assert (ds.PatientName, ds.PatientID, ds.AccessionNumber) == (PATIENT_NAME, PATIENT_ID, "ACC-1")
    assert ds.VerificationFlag == "UNVERIFIED" and ds.PreliminaryFlag == "PRELIMINARY"
    assert ds.SeriesDescription == REPORT_SERIES_DESCRIPTION and "unverified" in ds.SeriesDescription
    assert (ds.ManufacturerModelName, ds.SoftwareVersions) == (MODEL, VERSION)
    ours = [e for e in ds.ContributingEquipmentSequence if e.Manufacturer == "fracture"]
    assert (ours[0].ManufacturerModelName, ours[0].SoftwareVersions) == (MODEL, VERSION)
    assert ds.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == LOCAL_SCHEME
    assert "PixelData" not in ds


def test_capture_has_the_heatmap_burned_in_in_the_study(capture_file: Path, inputs: list[Dataset],
                                                         overlay_png: bytes) -> None:
    ds = dcmread(capture_file)
    source = inputs[0]
    assert ds.SOPClassUID == uid.SecondaryCaptureImageStorage
    assert ds.BurnedInAnnotation == "YES"
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    assert (ds.PatientName, ds.PatientID) == (PATIENT_NAME, PATIENT_ID)
    assert ds.SeriesDescription == CAPTURE_SERIES_DESCRIPTION
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert list(ds.PatientOrientation) == ["L", "F"] and ds.Laterality == "L"
    rgb = ds.pixel_array
    assert rgb.shape == (source.Rows, source.Columns, 3)
    # Red where the blob is, the X-ray's own gray (R = G = B) far from it.
    gray = source.pixel_array.astype(int)
    assert int(rgb[..., 0].astype(int).sum()) > int(gray.sum())
    assert np.array_equal(rgb[-1, -1], [gray[-1, -1]] * 3)


def test_capture_refuses_what_is_not_rgb(inputs: list[Dataset]) -> None:
    with pytest.raises(ValueError, match="RGB"):
        build_heatmap_capture(inputs[0], np.zeros((4, 4), np.uint8), MODEL, VERSION)


def test_a_report_covers_one_study(inputs: list[Dataset], findings: list[ImageFinding]) -> None:
    other = dcmread(io.BytesIO(dicom_file(np.zeros((8, 8), np.uint8)).data))
    with pytest.raises(ValueError, match="2 studies"):
        build_report([*findings, ImageFinding(other, "fractured", 0.9)], MODEL, VERSION, THRESHOLD)
    with pytest.raises(ValueError):
        build_report([], MODEL, VERSION, THRESHOLD)


def test_our_objects_are_told_apart_from_the_inputs(report_file: Path, capture_file: Path,
                                                    inputs: list[Dataset]) -> None:
    assert is_our_report(dcmread(report_file, stop_before_pixels=True))
    assert is_our_report(dcmread(capture_file, stop_before_pixels=True))
    assert not any(is_our_report(ds) for ds in inputs)


@pytest.mark.parametrize("which", ["report_file", "capture_file"])
def test_dciodvfy_finds_no_error(which: str, request: pytest.FixtureRequest) -> None:
    exe = shutil.which("dciodvfy")
    if exe is None:
        skip_or_fail("dciodvfy is not installed: apt-get install dicom3tools (scripts/system-deps.sh)")
    path: Path = request.getfixturevalue(which)
    done = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    lines = (done.stdout + done.stderr).splitlines()
    print(f"dciodvfy {which}:", *lines, sep="\n  ")
    assert [line for line in lines if "Error" in line] == []
