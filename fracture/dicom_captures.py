"""Secondary Captures for the PACS: an image called fractured with its heatmap burned in, in the image's study.

Any viewer shows a Secondary Capture (1.2.840.10008.5.1.4.1.1.7), which is why the heatmap travels as pixels rather
than as an overlay or a segmentation few viewers draw. BurnedInAnnotation is YES: the picture is the model's
annotation. The capture refers back to its source (Source Image Sequence) and names the model (Contributing
Equipment, Software Versions), as the report does.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from fracture.dicom_reports import MANUFACTURER, equipment, header

if TYPE_CHECKING:
    from pydicom import Dataset

CAPTURE_SERIES_DESCRIPTION = "AI fracture heatmap (unverified)"
CAPTURE_SERIES_NUMBER = 9902


def composite_overlay(gray: Image.Image | np.ndarray, overlay_png: bytes) -> np.ndarray:
    """Draw an RGBA overlay PNG (stretched to the image's size) on a grayscale image; return RGB (rows, cols, 3)."""
    image = gray if isinstance(gray, Image.Image) else Image.fromarray(np.asarray(gray, dtype=np.uint8))
    base = image.convert("RGBA")
    with Image.open(io.BytesIO(overlay_png)) as im:
        overlay = im.convert("RGBA").resize(base.size, Image.Resampling.BILINEAR)
    return np.asarray(Image.alpha_composite(base, overlay).convert("RGB"))


def _orientation(source: Dataset) -> tuple[str, str] | None:
    """The source's Patient Orientation as highdicom accepts it (one letter per axis), or None."""
    value = source.get("PatientOrientation")
    values = [str(v) for v in value] if value else []
    return (values[0], values[1]) if len(values) == 2 and all(v in "APRLHF" and len(v) == 1 for v in values) else None


def _laterality(source: Dataset) -> str | None:
    """The series' Laterality (R or L) from the source's Laterality or Image Laterality; None (empty) when unknown.

    Type 2C in General Series: present, empty if unknown, for a paired body part (a hand, a leg)."""
    for keyword in ("Laterality", "ImageLaterality"):
        if source.get(keyword) in ("R", "L"):
            return str(source.get(keyword))
    return None


def build_heatmap_capture(
    source: Dataset, rgb: np.ndarray, model_name: str, model_version: str, *, series_uid: str | None = None,
    series_number: int = CAPTURE_SERIES_NUMBER, instance_number: int = 1,
) -> Dataset:
    """Build a Secondary Capture of `rgb` (the source image with its heatmap drawn on, uint8 rows x cols x 3) in the
    source's study and patient, in a new series (or `series_uid`, to keep one job's captures together)."""
    from highdicom.sc import SCImage
    from pydicom import DataElement
    from pydicom import Dataset as PydicomDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 array (rows, columns, 3), got {rgb.dtype} {rgb.shape}")
    ref = header(source)
    capture = SCImage.from_ref_dataset(
        ref, np.ascontiguousarray(rgb), "RGB", 8, "PATIENT", series_uid or generate_uid(), series_number,
        generate_uid(), instance_number, MANUFACTURER, patient_orientation=_orientation(ref) or ("L", "F"),
        transfer_syntax_uid=ExplicitVRLittleEndian, contributing_equipment=equipment(model_name, model_version),
        series_description=CAPTURE_SERIES_DESCRIPTION, manufacturer_model_name=model_name,
        software_versions=model_version,
    )
    if _orientation(ref) is None:  # highdicom wants one; the source's own (or none, Type 2) is the truth
        capture["PatientOrientation"].value = ref.get("PatientOrientation") or None
    capture.copy_patient_and_study_information(ref)
    capture.BurnedInAnnotation = "YES"
    capture.ImageComments = f"Fracture heatmap of {model_name} {model_version}; not verified by a person"
    capture.DerivationDescription = "Source image with the model's heatmap (class activation) burned in"
    if ref.get("BodyPartExamined"):
        capture.BodyPartExamined = ref.BodyPartExamined
    capture["Laterality"] = DataElement(0x00200060, "CS", _laterality(ref))  # Type 2C: empty when unknown
    item = PydicomDataset()
    item.ReferencedSOPClassUID = ref.SOPClassUID
    item.ReferencedSOPInstanceUID = ref.SOPInstanceUID
    capture.SourceImageSequence = [item]
    return capture
