"""DICOM X-rays: recognise them by their first bytes, read their identifiers, turn their pixels into 8-bit gray.

pydicom is imported inside the functions: it costs about a second to import, and the web, the worker and
`fracture classify` only pay it when a DICOM file arrives.
"""

from __future__ import annotations

import io
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

# A DICOM file (PS3.10 7.1) starts with a 128-byte preamble, then "DICM"; sniffing needs this many bytes.
PREAMBLE = 128
MAGIC = b"DICM"
HEAD_BYTES = PREAMBLE + len(MAGIC)
# Names under which a data set written without the preamble (as some older systems do) is still taken as DICOM.
SUFFIXES = (".dcm", ".dicom")
# Projection X-ray modalities (PS3.3 C.7.3.1.1.1): computed and digital radiography, radiographic imaging,
# radiofluoroscopy, angiography, panoramic and intra-oral dental X-ray, mammography; and OT ("other", often a
# secondary capture of an X-ray), whose odd images the model's out-of-distribution flag is there to catch.
RADIOGRAPH_MODALITIES = ("CR", "DX", "RG", "RF", "XA", "PX", "IO", "MG", "OT")
# The patient's identifiers: read only when SHOW_PATIENT_IDENTIFIERS allows them to be shown.
PATIENT_FIELDS = ("patient_name", "patient_id", "patient_birth_date")
_FIELD_LENGTHS = {"study_instance_uid": 64, "sop_instance_uid": 64, "patient_name": 255, "patient_id": 64,
                  "patient_birth_date": 16}

Source = bytes | str | Path | BinaryIO


class DicomError(ValueError):
    """A DICOM file that cannot be classified; its message is the reason shown for the image."""


def has_preamble(head: bytes) -> bool:
    """Whether a file's first HEAD_BYTES bytes are a DICOM file's preamble and "DICM"."""
    return head[PREAMBLE:HEAD_BYTES] == MAGIC


def is_bare_dataset(head: bytes) -> bool:
    """Whether `head` starts like a DICOM data set written without its preamble: a little-endian tag of group 0002
    (file meta) or 0008 (identification), which no accepted image format starts with."""
    return len(head) >= 8 and head[:2] in (b"\x02\x00", b"\x08\x00") and head[3:4] == b"\x00"


def is_dicom(head: bytes, name: str = "") -> bool:
    """Whether a file is DICOM: by its preamble, or (without one) named .dcm and starting like a data set."""
    return has_preamble(head) or (name.lower().endswith(SUFFIXES) and is_bare_dataset(head))


def head_of(source: Source) -> bytes:
    """The first HEAD_BYTES bytes of `source` (a stream is put back where it was)."""
    if isinstance(source, bytes):
        return source[:HEAD_BYTES]
    if isinstance(source, str | Path):
        with open(source, "rb") as f:
            return f.read(HEAD_BYTES)
    where = source.tell()
    head = source.read(HEAD_BYTES)
    source.seek(where)
    return head


@dataclass(frozen=True)
class Identifiers:
    """Where a DICOM image belongs (its study and its own instance) and, when allowed, whose it is."""

    study_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    patient_name: str | None = None
    patient_id: str | None = None
    patient_birth_date: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return asdict(self)


def _text(value: object, field: str) -> str | None:
    return clean_text(value, _FIELD_LENGTHS[field])


def clean_text(value: object, length: int) -> str | None:
    """A header value as a clean string of at most `length` characters (no control characters: PostgreSQL refuses
    NUL), or None when empty."""
    if value is None:
        return None
    text = "".join(ch for ch in str(value) if unicodedata.category(ch) != "Cc").strip()
    return text[:length] or None


def _open(source: Source, head: bytes, **kwargs: Any) -> Dataset:
    from pydicom import dcmread

    fp: Any = io.BytesIO(source) if isinstance(source, bytes) else source
    # force=True only for a data set without its preamble; with one, pydicom checks it.
    return dcmread(fp, force=not has_preamble(head), **kwargs)


def read_identifiers(source: Source, with_patient: bool = False) -> Identifiers | None:
    """The UIDs (and with `with_patient` the patient's name, id and birth date) from a DICOM file's header, without
    reading its pixels; None when `source` is not DICOM or its header cannot be read (decoding says why)."""
    try:
        head = head_of(source)
        if not (has_preamble(head) or is_bare_dataset(head)):
            return None
        tags = ["StudyInstanceUID", "SOPInstanceUID"]
        if with_patient:
            tags += ["PatientName", "PatientID", "PatientBirthDate"]
        ds = _open(source, head, stop_before_pixels=True, specific_tags=tags)
        values = {
            "study_instance_uid": ds.get("StudyInstanceUID"), "sop_instance_uid": ds.get("SOPInstanceUID"),
            "patient_name": ds.get("PatientName"), "patient_id": ds.get("PatientID"),
            "patient_birth_date": ds.get("PatientBirthDate"),
        }
    except Exception:  # a hostile or broken header: no identifiers, and the decode gives the reason
        return None
    ids = {k: _text(v, k) if v is not None else None for k, v in values.items()}
    if not with_patient:
        ids.update(dict.fromkeys(PATIENT_FIELDS))
    return Identifiers(**ids)


# ---------------------------------------------------------------- pixels


def to_gray(source: Source, max_pixels: int) -> np.ndarray:
    """A DICOM X-ray's pixels as 8-bit grayscale (rows x columns), bright meaning dense, or raise DicomError.

    The modality LUT (rescale slope and intercept) and then the VOI LUT or window are applied, as a viewer shows
    the image; without a window, 8-bit data is taken as it is and deeper data is stretched from its lowest to its
    highest value. MONOCHROME1 (low values bright) is inverted.
    """
    try:
        # Elements above 1 MB (the pixel data) are read only when used: after the size checks.
        ds = _open(source, head_of(source), defer_size="1 MB")
    except Exception as e:  # pydicom raises many types on a damaged header
        raise DicomError(f"not a readable DICOM file: {e}") from None
    _check(ds, max_pixels)
    try:
        pixels = _pixel_array(ds)
    except DicomError:
        raise
    except MemoryError:
        raise DicomError("could not decode DICOM pixel data: out of memory") from None
    except Exception as e:  # decoders raise many types on damaged data
        raise DicomError(f"could not decode DICOM pixel data: {type(e).__name__}: {e}") from None
    return pixels


def _number(ds: Dataset, keyword: str, default: int) -> int:
    try:
        value = ds.get(keyword)
        return default if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        raise DicomError(f"DICOM header has an invalid {keyword}: {ds.get(keyword)!r}") from None


def _check(ds: Dataset, max_pixels: int) -> None:
    """Refuse what is no single radiograph, or cannot be decoded here, before any pixel is decoded."""
    modality = str(ds.get("Modality") or "").strip().upper()
    if modality and modality not in RADIOGRAPH_MODALITIES:
        accepted = ", ".join(RADIOGRAPH_MODALITIES)
        raise DicomError(f"DICOM modality {modality} is not a radiograph (accepted: {accepted})")
    if "PixelData" not in ds:
        raise DicomError("DICOM file holds no image (no pixel data)")
    frames = _number(ds, "NumberOfFrames", 1)
    if frames > 1:
        raise DicomError(f"multi-frame DICOM ({frames} frames) is not supported: upload single X-ray images")
    rows, columns = _number(ds, "Rows", 0), _number(ds, "Columns", 0)
    if rows < 1 or columns < 1:
        raise DicomError("image has no pixels")
    if rows * columns > max_pixels:
        raise DicomError(
            f"image too large: {columns}x{rows} pixels, above the limit of {max_pixels} (MAX_IMAGE_PIXELS)"
        )
    photometric = str(ds.get("PhotometricInterpretation") or "").strip().upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2", "RGB") and not photometric.startswith("YBR"):
        raise DicomError(f"DICOM photometric interpretation {photometric or '(none)'} is not supported")
    _check_decoder(ds)


def _check_decoder(ds: Dataset) -> None:
    """Refuse a compressed transfer syntax that no installed decoder reads, naming it."""
    from pydicom import uid
    from pydicom.dataset import FileMetaDataset
    from pydicom.pixels import get_decoder

    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = FileMetaDataset()
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is None:
        # A data set without its file meta: its encoding, as read, says which uncompressed syntax it is.
        implicit, little = ds.original_encoding
        syntax = (uid.ImplicitVRLittleEndian if implicit else
                  uid.ExplicitVRLittleEndian if little else uid.ExplicitVRBigEndian)
        ds.file_meta.TransferSyntaxUID = syntax
    syntax = uid.UID(str(syntax))
    try:
        available = get_decoder(syntax).is_available
    except (NotImplementedError, ValueError):
        available = False
    if not available:
        name = f"{syntax.name} ({syntax})" if syntax.name != str(syntax) else str(syntax)
        raise DicomError(f"DICOM transfer syntax {name} cannot be decoded: no decoder for it is installed")


def _pixel_array(ds: Dataset) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    arr = ds.pixel_array
    if arr.ndim == 3:  # colour (YBR arrives as RGB): luminance, as Pillow's convert("L")
        if arr.dtype != np.uint8:
            raise DicomError(f"DICOM colour images of more than 8 bits are not supported ({arr.dtype})")
        from PIL import Image

        return np.asarray(Image.fromarray(arr).convert("L"))
    values = apply_modality_lut(arr, ds)
    shown, lo, hi = _window(values, ds)
    scaled = (shown - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros(shown.shape)
    if str(ds.PhotometricInterpretation).strip().upper() == "MONOCHROME1":
        scaled = 255.0 - scaled
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _window(values: np.ndarray, ds: Dataset) -> tuple[np.ndarray, float, float]:
    """The VOI LUT or window applied to modality values, and the range its output spans; without either the
    values as they are, with their 8-bit range or, deeper, their own lowest and highest."""
    from pydicom.pixels import apply_voi, apply_voi_lut, apply_windowing

    lut = ds.get("VOILUTSequence")
    has_lut = bool(lut) and lut[0].get("LUTDescriptor") is not None and lut[0].get("LUTData") is not None
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    if has_lut:
        if not np.issubdtype(values.dtype, np.integer):  # a LUT is indexed by whole values
            values = np.rint(values).astype(np.int64)
        count, first = int(lut[0].LUTDescriptor[0]) or 2**16, int(lut[0].LUTDescriptor[1])
        outputs = apply_voi(np.arange(first, first + count, dtype=np.int64), ds)
        return apply_voi_lut(values, ds), float(outputs.min()), float(outputs.max())
    if has_window:
        center, width = (_first(ds.WindowCenter), abs(_first(ds.WindowWidth)))
        probe = np.array([center - 64 * width, center + 64 * width])  # far below and above: black and white
        try:
            lo, hi = apply_windowing(probe, ds)
            return apply_voi_lut(values, ds), float(lo), float(hi)
        except ValueError as e:  # a window width pydicom refuses (below 1 for LINEAR), an unknown function
            raise DicomError(f"DICOM window cannot be applied: {e}") from None
    lo, hi = float(values.min()), float(values.max())
    if _number(ds, "BitsStored", 8) <= 8 and lo >= 0 and hi <= 255:
        return values, 0.0, 255.0
    return values, lo, hi


def _first(value: Any) -> float:
    """The first of a multi-valued element (several windows: the first is the one to show), as a float."""
    try:
        return float(value[0])
    except TypeError:
        return float(value)
