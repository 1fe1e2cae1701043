"""Bad images decoded by the preprocessing itself (`fracture.ml.preprocess.decode`), each a real file built here:
every format to the same pixels, EXIF orientation, CMYK and 16-bit, huge images and bombs in bounded time and
memory, truncated and non-image files refused with ImageError."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bad_files import bomb_png, encode, exif_rotated_jpeg, gray16_png, halves
from PIL import Image as PILImage

from fracture.ml.preprocess import ImageError, decode

_MEASURE = """
import json, resource, sys, time
from pathlib import Path
from fracture.ml.preprocess import ImageError, decode
out = {}
for name in sys.argv[2:]:
    data = Path(sys.argv[1], name).read_bytes()
    for limit in (64_000_000, 120_000_000):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        try:
            result = "%dx%d" % decode(data, 128, max_pixels=limit).size
        except ImageError as e:
            result = str(e)
        out["%s@%d" % (name, limit)] = {"result": result, "seconds": time.perf_counter() - start,
            "grew_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024}
print(json.dumps(out))
"""



def test_huge_images_decode_in_bounded_time_and_memory(tmp_path: Path) -> None:
    """10000x10000 and a 12000x12000 bomb: refused before decoding, or decoded in about a byte a pixel at most."""
    flat = PILImage.new("L", (10000, 10000), 128)
    (tmp_path / "flat.png").write_bytes(encode(flat, "PNG", compress_level=9))
    (tmp_path / "flat.jpg").write_bytes(encode(flat, "JPEG", quality=50))
    (tmp_path / "bomb.png").write_bytes(bomb_png(12000, 12000))
    del flat
    # A fresh process, so that its peak memory (ru_maxrss) is this decode's and no earlier test's.
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(tmp_path), "flat.png", "flat.jpg", "bomb.png"],
                          capture_output=True, text=True, timeout=120, check=True)
    m = json.loads(done.stdout.strip().splitlines()[-1])
    for name in ("flat.png", "flat.jpg"):  # over the default limit: refused from the header alone
        refused = m[f"{name}@64000000"]
        assert refused["result"].startswith("image too large: 10000x10000 pixels, above the limit of 64000000")
        assert refused["seconds"] < 1 and refused["grew_mb"] < 20
    assert m["bomb.png@120000000"]["result"].startswith("image too large: 12000x12000")
    assert m["bomb.png@120000000"]["grew_mb"] < 20
    png, jpg = m["flat.png@120000000"], m["flat.jpg@120000000"]
    assert png["result"] == jpg["result"] == "128x128"
    assert png["seconds"] < 10 and png["grew_mb"] < 200  # 100 MB of pixels, decoded once
    assert jpg["seconds"] < 5 and jpg["grew_mb"] < 40  # libjpeg decodes at 1/8 scale (draft)



@pytest.mark.parametrize(("orientation", "top", "left"), [(1, "mixed", "dark"), (6, "dark", "mixed"),
                                                          (8, "bright", "mixed"), (3, "mixed", "bright")])
def test_exif_orientation_is_applied(orientation: int, top: str, left: str) -> None:
    """A 160x80 image, left half black: rotated by its EXIF tag, black lands on top (6), bottom (8) or right (3)."""
    a = np.asarray(decode(exif_rotated_jpeg(orientation), 64), dtype=np.float32)

    def shade(region: np.ndarray) -> str:
        mean = float(region.mean())
        return "dark" if mean < 60 else "bright" if mean > 195 else "mixed"

    assert (shade(a[:24]), shade(a[:, :24])) == (top, left)



def test_formats_decode_to_the_same_pixels(xray: PILImage.Image) -> None:
    reference = np.asarray(decode(encode(xray, "PNG"), 128), dtype=np.float32)
    for fmt, options in (("GIF", {}), ("BMP", {}), ("TIFF", {"compression": "tiff_lzw"}), ("JPEG", {"quality": 95}),
                         ("WEBP", {"lossless": True})):
        decoded = np.asarray(decode(encode(xray, fmt, **options), 128), dtype=np.float32)
        assert np.abs(decoded - reference).mean() < 2.0, fmt



def test_cmyk_16_bit_and_one_pixel_images_keep_their_content(xray: PILImage.Image) -> None:
    white = np.asarray(decode(encode(PILImage.new("CMYK", (40, 30), (0, 0, 0, 0)), "JPEG"), 32))
    black = np.asarray(decode(encode(PILImage.new("CMYK", (40, 30), (0, 0, 0, 255)), "JPEG"), 32))
    assert white.mean() > 240 and black.mean() < 15  # not inverted
    from_cmyk = np.asarray(decode(encode(xray.convert("CMYK"), "JPEG", quality=95), 128), dtype=np.float32)
    assert np.abs(from_cmyk - np.asarray(decode(encode(xray, "PNG"), 128), dtype=np.float32)).mean() < 8

    ramp = np.asarray(decode(gray16_png(), 64))
    assert ramp.min() <= 5 and ramp.max() >= 250, "16-bit values are stretched to 8 bits, not clipped at 255"
    assert (np.diff(ramp.astype(int), axis=0) >= 0).all()  # the ramp runs top to bottom

    assert set(np.unique(np.asarray(decode(encode(PILImage.new("L", (1, 1), 200), "PNG"), 64)))) == {200}



def test_not_an_image_and_a_truncated_jpeg_raise_image_error(truncated_jpeg: bytes, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="image file is truncated"):
        decode(truncated_jpeg, 64)
    for data in (b"", b"hello", b"\x89PNG\r\n\x1a\n", halves((4, 4)).tobytes()):
        with pytest.raises(ImageError):
            decode(data, 64)
    (tmp_path / "notes.jpg").write_text("plain text named .jpg")
    with pytest.raises(ImageError, match="not an image"):
        decode(tmp_path / "notes.jpg", 64)
