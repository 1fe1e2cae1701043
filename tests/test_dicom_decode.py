"""DICOM X-rays built from a real X-ray of the dataset: decoded to the same pixels as their source image (8- and
16-bit, rescale and window, MONOCHROME1, RLE, JPEG 2000 and JPEG-LS, a data set without its preamble), refused
with a clear reason (modality, frames, a transfer syntax no decoder reads, size), told apart by their first bytes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from dicom_files import (
    PATIENT_BIRTH_DATE,
    PATIENT_ID,
    PATIENT_NAME,
    UNDECODABLE_SYNTAX,
    dicom_file,
    jpeg_baseline_dicom,
    png_bytes,
    small,
    with_syntax,
)
from PIL import Image
from pydicom import uid

from fracture import dicom
from fracture.archive import HEAD_BYTES, not_an_image, sniff
from fracture.ml.preprocess import ImageError, decode

SIZE = 128


@pytest.fixture(scope="module")
def image(xray: Image.Image) -> Image.Image:
    """A real X-ray of the dataset, scaled down (the DICOM files stay small and fast)."""
    return small(xray)


@pytest.fixture(scope="module")
def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(decode(data, SIZE), dtype=np.int16)


def reference(pixels: np.ndarray) -> np.ndarray:
    """What the preprocessing makes of `pixels` saved as a PNG: the pixels a DICOM file of them must decode to."""
    return decoded(png_bytes(Image.fromarray(pixels)))


def assert_same(got: np.ndarray, want: np.ndarray, tolerance: int = 1) -> None:
    assert got.shape == want.shape == (SIZE, SIZE)
    assert int(np.abs(got - want).max()) <= tolerance


def as_16_bit(pixels: np.ndarray) -> np.ndarray:
    """The 8-bit X-ray as a 16-bit detector would store it; with slope 0.5 and intercept -100 (below), a pixel p
    has the modality value 100 p + 400."""
    return pixels.astype(np.uint16) * 200 + 1000


RESCALE = {"RescaleSlope": 0.5, "RescaleIntercept": -100, "RescaleType": "US"}


def window_of(lo: int, hi: int) -> dict[str, float]:
    """The LINEAR window (PS3.3 C.11.2.1.2.1) that shows the modality values of 8-bit pixels lo..hi as black..white."""
    first, last = 100 * lo + 400, 100 * hi + 400
    return {"WindowCenter": first + (last - first) / 2 + 0.5, "WindowWidth": last - first + 1}


def test_8_bit_monochrome2_and_monochrome1_of_the_inverted_image_decode_to_the_source_pixels(
    pixels: np.ndarray,
) -> None:
    want = reference(pixels)
    mono2 = decoded(dicom_file(pixels).data)
    mono1 = decoded(dicom_file(255 - pixels, photometric="MONOCHROME1").data)
    assert_same(mono2, want, tolerance=0)
    assert_same(mono1, want, tolerance=0)
    assert_same(mono1, mono2, tolerance=0)


def test_16_bit_with_rescale_slope_intercept_and_a_window(pixels: np.ndarray) -> None:
    stored = as_16_bit(pixels)
    # A window over the whole range gives the source image back; a narrower one is applied, not ignored.
    full = dicom_file(stored, **RESCALE, **window_of(0, 255))
    assert_same(decoded(full.data), reference(pixels))
    lo, hi = 40, 200
    narrow = np.clip((pixels.astype(np.float64) - lo) * 255 / (hi - lo), 0, 255).round().astype(np.uint8)
    assert_same(decoded(dicom_file(stored, **RESCALE, **window_of(lo, hi)).data), reference(narrow))
    # A SIGMOID window (PS3.3 C.11.2.1.3.1) shows the same anatomy through a smooth curve.
    sigmoid = decoded(dicom_file(stored, **RESCALE, **window_of(lo, hi), VOILUTFunction="SIGMOID").data)
    assert np.corrcoef(sigmoid.ravel(), reference(narrow).ravel())[0, 1] > 0.95
    # Several windows: the first is shown.
    two = window_of(lo, hi)
    both = {"WindowCenter": [two["WindowCenter"], 20000], "WindowWidth": [two["WindowWidth"], 100]}
    assert_same(decoded(dicom_file(stored, **RESCALE, **both).data), reference(narrow))


def test_16_bit_monochrome1_of_the_inverted_image_decodes_like_monochrome2(pixels: np.ndarray) -> None:
    stored = as_16_bit(pixels)
    window = window_of(40, 200)
    mono2 = decoded(dicom_file(stored, **RESCALE, **window).data)
    # Stored inverted, its modality values are 32567.5 - x; the same window mirrored around that.
    mirrored = {"WindowCenter": 32568.5 - window["WindowCenter"], "WindowWidth": window["WindowWidth"]}
    mono1 = decoded(dicom_file(65535 - stored, photometric="MONOCHROME1", **RESCALE, **mirrored).data)
    assert_same(mono1, mono2)


def test_16_bit_without_a_window_is_stretched_from_its_lowest_to_its_highest_value(pixels: np.ndarray) -> None:
    lo, hi = int(pixels.min()), int(pixels.max())
    assert (lo, hi) != (0, 255)  # the X-ray does not span the whole 8-bit range: the stretch shows
    stretched = ((pixels.astype(np.float64) - lo) * 255 / (hi - lo)).round().astype(np.uint8)
    data = dicom_file(as_16_bit(pixels), bits_stored=16, **RESCALE).data
    assert_same(decoded(data), reference(stretched))


# The compressed syntaxes the tests encode (RLE: pydicom; JPEG 2000: pylibjpeg-openjpeg; JPEG-LS: pyjpegls, a test
# dependency only) and, for each, the decoders of the project's own dependencies that must read it.
COMPRESSED = {uid.RLELossless: {"pydicom"}, uid.JPEG2000Lossless: {"pylibjpeg", "pillow"},
              uid.JPEGLSLossless: {"pylibjpeg"}}


@pytest.mark.parametrize("syntax", list(COMPRESSED), ids=["rle", "jpeg2000", "jpeg-ls"])
def test_compressed_8_and_16_bit_decode_to_the_same_pixels(pixels: np.ndarray, syntax: str) -> None:
    compressed = dicom_file(pixels, syntax=syntax).data
    assert dicom.has_preamble(compressed[:HEAD_BYTES])
    assert_same(decoded(compressed), reference(pixels), tolerance=0)
    stored = as_16_bit(pixels)
    deep = dicom_file(stored, syntax=syntax, **RESCALE, **window_of(0, 255)).data
    assert_same(decoded(deep), reference(pixels))


@pytest.mark.parametrize("syntax", [*COMPRESSED, uid.JPEGLSNearLossless, uid.JPEGLosslessSV1, uid.JPEGLossless,
                                    uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEG2000, uid.HTJ2KLossless])
def test_every_syntax_the_readme_names_is_read_by_a_decoder_the_project_installs(pixels: np.ndarray,
                                                                                 syntax: str) -> None:
    from pydicom.pixels import get_decoder, pixel_array

    shipped = {"pydicom", "pylibjpeg", "pillow"}  # pyjpegls is a test dependency: it must not be the only reader
    assert set(get_decoder(syntax).available_plugins) & COMPRESSED.get(syntax, shipped), syntax
    if syntax in COMPRESSED:  # the files the tests encode decode through the project's own decoders alone
        data = dicom_file(as_16_bit(pixels), syntax=syntax).data
        for plugin in set(get_decoder(syntax).available_plugins) & COMPRESSED[syntax]:
            assert (pixel_array(io.BytesIO(data), decoding_plugin=plugin) == as_16_bit(pixels)).all(), plugin


def test_jpeg_baseline_decodes_like_the_jpeg_itself(image: Image.Image) -> None:
    data = jpeg_baseline_dicom(image).data
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=95)
    with Image.open(buf) as jpeg:
        want = reference(np.asarray(jpeg.convert("L")))
    assert_same(decoded(data), want, tolerance=2)  # another libjpeg may round an IDCT differently


def test_a_data_set_without_its_preamble_is_dicom_only_when_named_dcm(pixels: np.ndarray) -> None:
    bare = dicom_file(pixels, preamble=False).data
    head = bare[:HEAD_BYTES]
    assert not dicom.has_preamble(head)
    assert sniff(head, "scans/IM0001.dcm") == "dicom" and sniff(head, "scans/IM0001.DICOM") == "dicom"
    assert sniff(head, "scans/IM0001") is None and sniff(head, "notes.txt") is None
    assert_same(decoded(bare), reference(pixels), tolerance=0)


def test_a_file_with_a_preamble_is_dicom_whatever_its_name(pixels: np.ndarray) -> None:
    head = dicom_file(pixels).data[:HEAD_BYTES]
    assert sniff(head, "IM0001") == sniff(head, "") == sniff(head, "x.jpg") == "dicom"
    assert sniff(b"\0" * 128 + b"DICN", "x.dcm") is None
    assert not_an_image(b"\0" * 128 + b"DICN", "x.dcm").startswith("not a DICOM file")
    assert not_an_image(b"\0" * 132, "x.txt") == "not an image: unrecognised file format"


@pytest.mark.parametrize(("modality", "accepted"), [
    ("CR", True), ("DX", True), ("RG", True), ("MG", True), ("XA", True), ("OT", True), ("", True),
    ("CT", False), ("MR", False), ("US", False), ("NM", False), ("PT", False),
])
def test_only_radiograph_modalities_are_decoded(pixels: np.ndarray, modality: str, accepted: bool) -> None:
    data = dicom_file(pixels[:64, :64], modality=modality).data
    if accepted:
        assert decoded(data).shape == (SIZE, SIZE)
    else:
        with pytest.raises(ImageError, match=f"^DICOM modality {modality} is not a radiograph"):
            decode(data, SIZE)


def test_refusals_name_their_reason(pixels: np.ndarray) -> None:
    frames = np.stack([pixels[:64, :64]] * 12)
    with pytest.raises(ImageError) as multi:
        decode(dicom_file(frames).data, SIZE)
    assert str(multi.value) == "multi-frame DICOM (12 frames) is not supported: upload single X-ray images"

    j2k = dicom_file(pixels, syntax=uid.JPEG2000Lossless).data
    with pytest.raises(ImageError) as undecodable:
        decode(with_syntax(j2k, UNDECODABLE_SYNTAX), SIZE)
    assert str(undecodable.value) == (
        "DICOM transfer syntax JPEG 2000 Part 2 Multi-component Image Compression (Lossless Only) "
        f"({UNDECODABLE_SYNTAX}) cannot be decoded: no decoder for it is installed"
    )

    rows, columns = pixels.shape
    with pytest.raises(ImageError, match=rf"^image too large: {columns}x{rows} pixels, above the limit of 1000 "):
        decode(dicom_file(pixels).data, SIZE, max_pixels=1000)

    full = dicom_file(pixels).data
    with pytest.raises(ImageError, match="^(could not decode DICOM pixel data|not a readable DICOM file): "):
        decode(full[: len(full) // 2], SIZE)


def test_identifiers_are_read_from_the_header_and_the_patients_only_when_asked(pixels: np.ndarray) -> None:
    made = dicom_file(pixels)
    ids = dicom.read_identifiers(made.data)
    assert ids == dicom.Identifiers(study_instance_uid=made.study_uid, sop_instance_uid=made.sop_uid)
    full = dicom.read_identifiers(made.data, with_patient=True)
    assert full is not None
    assert (full.patient_name, full.patient_id, full.patient_birth_date) == (PATIENT_NAME, PATIENT_ID,
                                                                              PATIENT_BIRTH_DATE)
    bare = dicom_file(pixels, preamble=False)
    assert dicom.read_identifiers(bare.data) == dicom.Identifiers(bare.study_uid, bare.sop_uid)
    assert dicom.read_identifiers(png_bytes(Image.fromarray(pixels))) is None
    assert dicom.read_identifiers(b"\0" * 128 + b"DICM" + b"\xff" * 40) is None  # a broken header: none


def test_a_voi_lut_sequence_is_applied_over_its_own_output_range(pixels: np.ndarray) -> None:
    from pydicom.dataset import Dataset

    stored = as_16_bit(pixels)
    # A LUT over the stored values 1000..52000 (slope 1, intercept 0: a float modality output) to 0..4095.
    first, count = 1000, 51001
    lut = Dataset()
    lut.LUTDescriptor = [count, first, 16]
    lut.add_new("LUTData", "OW", (np.arange(count) * 4095 // (count - 1)).astype("<u2").tobytes())
    data = dicom_file(stored, RescaleSlope=1, RescaleIntercept=0, VOILUTSequence=[lut]).data
    assert_same(decoded(data), reference(pixels))


def test_colour_is_taken_as_luminance_and_palette_colour_is_refused(pixels: np.ndarray) -> None:
    rgb = np.repeat(pixels[:, :, None], 3, axis=2)
    assert_same(decoded(dicom_file(rgb, photometric="RGB", modality="OT").data), reference(pixels), tolerance=0)
    palette = dicom_file(pixels, photometric="PALETTE COLOR").data
    with pytest.raises(ImageError, match="^DICOM photometric interpretation PALETTE COLOR is not supported$"):
        decode(palette, SIZE)
