"""The DICOM Structured Report of a finished job's study, for the PACS: one TID 1500 measurement group per image.

The document is a Comprehensive SR (1.2.840.10008.5.1.4.1.1.88.33) holding a TID 1500 "Imaging Measurement Report":
- TID 1500 is the template PACS viewers and OHIF read as measurements (highdicom builds it, dcmtk's dsrdump and
  dsr2html render it as text);
- Comprehensive SR is the SR class most archives and viewers accept and render; the report has no coordinates at
  all, so nothing needs Comprehensive 3D SR (newer, and still refused by some archives), and Enhanced SR would lose
  nothing but is shown by fewer viewers as a measurement report.

Each image has one measurement group (TID 1501) referencing its SOP instance, holding:
- "Fracture of bone" (SCT 125605004) = Present (SCT 52101004) / Absent (SCT 272519000), or Not Evaluated
  (SCT 373121007) for an image that could not be classified, with the reason as a Comment (DCM 121106);
- "Probability" (DCM 122157), 0-1, UCUM "1" (no units): the model's probability of fracture;
- "Unlike the training data" = Yes (SCT 373066001) / No (SCT 373067005), and its score as a NUM: local codes of this
  system (scheme 99FRACTURE, declared in the Coding Scheme Identification), as no standard code exists for them;
- the algorithm's name, version, manufacturer and decision threshold (TID 4019).
The document is UNVERIFIED and PRELIMINARY: no person has read it.
"""

from __future__ import annotations

from collections.abc import Sequence
from copy import deepcopy
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from highdicom import ContributingEquipment
    from highdicom.sr import AlgorithmIdentification, CodedConcept, MeasurementsAndQualitativeEvaluations
    from pydicom import Dataset
    from pydicom.sr.coding import Code

MANUFACTURER = "fracture"
REPORT_SERIES_DESCRIPTION = "AI fracture detection (unverified)"
REPORT_SERIES_NUMBER = 9901
POSITIVE_CLASS = "fractured"
LOCAL_SCHEME = "99FRACTURE"
_PIXELS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# The patient and study attributes highdicom reads from the first input (Type 2: present, possibly empty).
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate",
          "StudyTime", "ReferringPhysicianName")


@dataclass
class ImageFinding:
    """One input image of a job (its DICOM header; pixel data may be dropped) and what the model said of it."""

    source: Dataset
    prediction: str | None
    probability: float | None
    in_distribution: bool | None = None
    ood_score: float | None = None
    error: str | None = None


def header(source: Dataset) -> Dataset:
    """A copy of `source` without its pixels, its missing Type 2 patient and study attributes present and empty."""
    from pydicom import Dataset

    copy = Dataset()  # element by element: deep-copying a 30 MB radiograph's pixels only to drop them is waste
    for element in source:
        if element.keyword not in _PIXELS:
            copy.add(deepcopy(element))
    for keyword in _TYPE2:
        if keyword not in copy:
            setattr(copy, keyword, None)
    return copy


def equipment(model_name: str, model_version: str) -> list[ContributingEquipment]:
    """The Contributing Equipment item naming the model that produced an object."""
    from highdicom import ContributingEquipment
    from pydicom.sr.codedict import codes

    return [ContributingEquipment(
        manufacturer=MANUFACTURER, purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=model_name, software_versions=model_version,
        contribution_description="Automated fracture detection, not verified by a person",
    )]


def device_uid(model_name: str, model_version: str) -> str:
    """A UID for the model as an SR observer device, the same for every report of that version."""
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[MANUFACTURER, model_name, model_version]))


def _codes() -> dict[str, Code | CodedConcept]:
    from highdicom.sr import CodedConcept
    from pydicom.sr.codedict import codes

    return {
        "fracture": CodedConcept("125605004", "SCT", "Fracture of bone"),
        "present": codes.SCT.Present, "absent": codes.SCT.Absent, "not_evaluated": codes.SCT.NotEvaluated,
        "probability": codes.DCM.Probability, "unit": codes.UCUM.NoUnits,
        "unlike": CodedConcept("OOD", LOCAL_SCHEME, "Unlike the training data"),
        "ood_score": CodedConcept("OODSCORE", LOCAL_SCHEME, "Out-of-distribution score"),
        "yes": codes.SCT.Yes, "no": codes.SCT.No, "comment": codes.DCM.Comment,
    }


def _group(finding: ImageFinding, number: int, algorithm: AlgorithmIdentification,
           positive_class: str) -> MeasurementsAndQualitativeEvaluations:
    """The TID 1501 measurement group of one image."""
    from highdicom.sr import (
        Measurement,
        MeasurementsAndQualitativeEvaluations,
        QualitativeEvaluation,
        RelationshipTypeValues,
        SourceImageForMeasurementGroup,
        TextContentItem,
        TrackingIdentifier,
    )
    from pydicom.uid import generate_uid

    c = _codes()
    classified = finding.prediction is not None and finding.probability is not None
    evaluations = [QualitativeEvaluation(c["fracture"], (
        c["present"] if finding.prediction == positive_class else c["absent"]) if classified else c["not_evaluated"])]
    measurements = []
    if classified:
        measurements.append(Measurement(c["probability"], float(finding.probability or 0.0), c["unit"]))
    if finding.in_distribution is not None:
        evaluations.append(QualitativeEvaluation(c["unlike"], c["no"] if finding.in_distribution else c["yes"]))
    if finding.ood_score is not None:
        measurements.append(Measurement(c["ood_score"], float(finding.ood_score), c["unit"]))
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=generate_uid(), identifier=f"Image {number}"),
        algorithm_id=algorithm, measurements=measurements, qualitative_evaluations=evaluations,
        source_images=[SourceImageForMeasurementGroup.from_source_image(finding.source)],
    )
    if not classified:
        reason = (finding.error or "no result")[:1024]
        group[0].ContentSequence.append(TextContentItem(c["comment"], f"Not classified: {reason}",
                                                        relationship_type=RelationshipTypeValues.CONTAINS))
    return group


def build_report(
    findings: Sequence[ImageFinding], model_name: str, model_version: str, threshold: float, *,
    positive_class: str = POSITIVE_CLASS, institution_name: str | None = None, series_uid: str | None = None,
    series_number: int = REPORT_SERIES_NUMBER, instance_number: int = 1,
) -> Dataset:
    """Build the Comprehensive SR of one study's findings, in that study, in a new series (or `series_uid`).

    Every image is listed: one that has no result (an error) as "Not Evaluated" with its reason.
    Raise ValueError when `findings` is empty or spans more than one study."""
    from highdicom.coding_schemes import CodingSchemeIdentificationItem
    from highdicom.sr import (
        AlgorithmIdentification,
        ComprehensiveSR,
        DeviceObserverIdentifyingAttributes,
        MeasurementReport,
        ObservationContext,
        ObserverContext,
    )
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    if not findings:
        raise ValueError("no findings to report")
    studies = {str(f.source.StudyInstanceUID) for f in findings}
    if len(studies) != 1:
        raise ValueError(f"findings span {len(studies)} studies; a report covers one")
    sources = [header(f.source) for f in findings]
    kept = [ImageFinding(s, f.prediction, f.probability, f.in_distribution, f.ood_score, f.error)
            for s, f in zip(sources, findings, strict=True)]
    algorithm = AlgorithmIdentification(model_name, model_version, parameters=[f"threshold={threshold:g}"],
                                        manufacturer=MANUFACTURER)
    observer = ObserverContext(observer_type=codes.DCM.Device,
                               observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
                                   uid=device_uid(model_name, model_version), name=model_name,
                                   manufacturer_name=MANUFACTURER, model_name=f"{model_name} {model_version}"))
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=observer),
        procedure_reported=codes.SCT.PlainRadiography,
        imaging_measurements=[_group(f, n, algorithm, positive_class) for n, f in enumerate(kept, start=1)],
    )
    return ComprehensiveSR(
        evidence=sources, content=report[0], series_instance_uid=series_uid or generate_uid(),
        series_number=series_number, sop_instance_uid=generate_uid(), instance_number=instance_number,
        manufacturer=MANUFACTURER, institution_name=institution_name, is_complete=True, is_final=False,
        is_verified=False, series_description=REPORT_SERIES_DESCRIPTION, manufacturer_model_name=model_name,
        software_versions=model_version, contributing_equipment=equipment(model_name, model_version),
        coding_schemes=[CodingSchemeIdentificationItem(
            LOCAL_SCHEME, name="Local codes of the fracture detection system",
            responsible_organization=MANUFACTURER)],
    )


def is_our_report(ds: Dataset) -> bool:
    """Whether `ds` (a header is enough) is a report or heatmap capture this system made, so intake can skip it."""
    from pydicom.uid import ComprehensiveSRStorage, SecondaryCaptureImageStorage

    if ds.get("SOPClassUID") not in (ComprehensiveSRStorage, SecondaryCaptureImageStorage):
        return False
    if ds.get("Manufacturer") != MANUFACTURER:
        return False
    return any(item.get("Manufacturer") == MANUFACTURER for item in ds.get("ContributingEquipmentSequence", []))
