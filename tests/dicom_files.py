"""DICOM files built with pydicom from real X-rays of the dataset, as a department's machines would send them."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydicom import dcmread, uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate

# A patient whose identifiers must never reach a page, a JSON answer or a CSV unless the setting allows it.
PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PID-4711-X"
PATIENT_BIRTH_DATE = "19610203"
# No decoder for it exists in pydicom or its plugins: a file in it is refused, naming it.
UNDECODABLE_SYNTAX = "1.2.840.10008.1.2.4.92"  # JPEG 2000 Part 2 Multi-component (Lossless Only)


@dataclass(frozen=True)
class DicomFile:
    """A DICOM file's bytes and the UIDs written into it."""

    data: bytes
    study_uid: str
    sop_uid: str


def small(xray: Image.Image, width: int = 320) -> Image.Image:
    """The X-ray scaled down to `width` columns: real anatomy, and DICOM files of a few hundred KB."""
    return xray.resize((width, round(xray.height * width / xray.width)), Image.Resampling.BILINEAR)


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def dicom_file(
    pixels: np.ndarray, *, photometric: str = "MONOCHROME2", modality: str = "DX", bits_stored: int | None = None,
    syntax: str = uid.ExplicitVRLittleEndian, preamble: bool = True, **elements: object,
) -> DicomFile:
    """A DX (by default) image of `pixels` (rows x columns, or frames x rows x columns) with the test patient's
    identifiers; `elements` are further data elements by keyword (RescaleSlope, WindowCenter, ...). Compressed
    with `syntax` where pydicom or a plugin encodes it; without `preamble`, a bare data set (no file meta)."""
    study, sop = uid.generate_uid(), uid.generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = uid.DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.SOPClassUID = uid.DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = uid.generate_uid()
    ds.Modality = modality
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = PATIENT_BIRTH_DATE
    ds.BodyPartExamined = "HAND"
    ds.set_pixel_data(pixels, photometric, bits_stored or pixels.dtype.itemsize * 8)
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    if syntax != uid.ExplicitVRLittleEndian:
        ds.compress(syntax)
    buf = io.BytesIO()
    sop = ds.SOPInstanceUID  # set_pixel_data() and compress() give the instance a new UID
    if preamble:
        ds.save_as(buf, enforce_file_format=True)
    else:
        del ds.file_meta
        ds.save_as(buf, implicit_vr=True, little_endian=True, enforce_file_format=False)
    return DicomFile(buf.getvalue(), str(study), str(sop))


def jpeg_baseline_dicom(image: Image.Image, quality: int = 95) -> DicomFile:
    """A DICOM file whose pixel data is a JPEG baseline of `image` (encoded by Pillow), as many CR exports are."""
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    made = dicom_file(np.asarray(image))
    ds = dcmread(io.BytesIO(made.data))
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = uid.JPEGBaseline8Bit
    ds.LossyImageCompression = "01"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return DicomFile(out.getvalue(), made.study_uid, made.sop_uid)


def with_syntax(data: bytes, syntax: str) -> bytes:
    """The same file, its transfer syntax relabelled (its pixel data left as it was)."""
    ds = dcmread(io.BytesIO(data))
    ds.file_meta.TransferSyntaxUID = syntax
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def study(images: list[Image.Image], accession: str = "ACC-0001", study_date: str = "20261204",
          study_uid: str | None = None, **elements: object) -> list[DicomFile]:
    """One study of DX files, one per X-ray (scaled down), sharing a Study Instance UID (new unless given),
    accession number and date, as a department's CR/DX machine sends them to the PACS."""
    study_uid = study_uid or str(uid.generate_uid())
    made = [
        dicom_file(np.asarray(small(image)), StudyInstanceUID=study_uid, AccessionNumber=accession,
                   StudyDate=study_date, InstanceNumber=n, **elements)
        for n, image in enumerate(images, start=1)
    ]
    return [DicomFile(f.data, study_uid, f.sop_uid) for f in made]
