"""Builders of hostile and unusual files for the bad-input tests: real bytes, made in memory."""

from __future__ import annotations

import csv
import io
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

EXIF_ORIENTATION = 0x0112


def encode(im: Image.Image, fmt: str, **options: object) -> bytes:
    """`im` saved in `fmt`."""
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int, height: int) -> bytes:
    """A valid all-black 8-bit grayscale PNG: a few hundred KB that decode to width*height bytes."""
    deflate = zlib.compressobj(9)
    row = b"\0" * (width + 1)  # filter byte + pixels
    block = row * max(1, (8 << 20) // len(row))
    rows_per_block = len(block) // len(row)
    idat = []
    for start in range(0, height, rows_per_block):
        idat.append(deflate.compress(block if height - start >= rows_per_block else row * (height - start)))
    idat.append(deflate.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", b"".join(idat))
            + _png_chunk(b"IEND", b""))


def halves(size: tuple[int, int]) -> Image.Image:
    """A grayscale image whose left half is black and right half white: shows any rotation."""
    a = np.zeros((size[1], size[0]), dtype=np.uint8)
    a[:, size[0] // 2 :] = 255
    return Image.fromarray(a)


def exif_rotated_jpeg(orientation: int = 6, size: tuple[int, int] = (160, 80)) -> bytes:
    """A non-square JPEG with an EXIF orientation tag: viewers rotate it, and so must the decoder."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return encode(halves(size), "JPEG", quality=95, exif=exif.tobytes())


def gray16_png(size: tuple[int, int] = (96, 64)) -> bytes:
    """A 16-bit grayscale PNG whose values span 1000..60000 (an X-ray detector's range, not 0..255)."""
    ramp = np.linspace(1000, 60000, size[0] * size[1]).reshape(size[1], size[0]).astype(np.uint16)
    im = Image.fromarray(ramp)
    assert im.mode.startswith("I;16")
    return encode(im, "PNG")


def make_zip(members: list[tuple[str | zipfile.ZipInfo, bytes]], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


def patch_member(archive: bytes, name: str, **fields: int) -> bytes:
    """`archive` with the sizes or CRC of member `name` rewritten in its local and central headers (a lying header).

    fields: file_size, compress_size, crc.
    """
    out = bytearray(archive)
    encoded = name.encode()
    # Local header: sig(4) ver(2) flag(2) method(2) time(2) date(2) crc(4) csize(4) usize(4) nlen(2) xlen(2) name
    # Central header: sig(4) made(2) ver(2) flag(2) method(2) time(2) date(2) crc(4) csize(4) usize(4) ... name at 46
    for sig, base, name_at in ((b"PK\x03\x04", 14, 30), (b"PK\x01\x02", 16, 46)):
        at = out.find(sig)
        while at >= 0 and out[at + name_at : at + name_at + len(encoded)] != encoded:
            at = out.find(sig, at + 4)
        assert at >= 0, f"no {sig!r} header for {name}"
        for field_name, offset in (("crc", 0), ("compress_size", 4), ("file_size", 8)):
            if field_name in fields:
                struct.pack_into("<I", out, at + base + offset, fields[field_name])
    return bytes(out)


def overlapping_bomb(member: bytes, copies: int) -> bytes:
    """A zip whose `copies` central-directory entries all point at one deflated member: a tiny file, a huge total."""
    one = make_zip([("bomb.jpg", member)])
    cd, eocd = one.find(b"PK\x01\x02"), one.find(b"PK\x05\x06")
    local, central = one[:cd], one[cd:eocd]
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, copies, copies, len(central) * copies, len(local), 0)
    return local + central * copies + end


def dataset_file(dataset_root: Path, label: str, filename: str) -> Path:
    """The blob of one file of the shared dataset, found through its manifest."""
    with open(dataset_root / "manifest.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["label"] == label and row["filename"] == filename:
                return dataset_root / "blobs" / row["md5"]
    raise LookupError(f"{label}/{filename} is not in the dataset's manifest")


def encrypted_zip(name: str, data: bytes, password: bytes) -> bytes:
    """A zip with one member encrypted the way `zip -e` does it (traditional PKWARE encryption), stored."""

    def crc_byte(crc: int, byte: int) -> int:  # CRC-32 register step without zlib's pre/post inversion
        return zlib.crc32(bytes([byte]), crc ^ 0xFFFFFFFF) ^ 0xFFFFFFFF

    keys = [0x12345678, 0x23456789, 0x34567890]

    def update(byte: int) -> None:
        keys[0] = crc_byte(keys[0], byte)
        keys[1] = ((keys[1] + (keys[0] & 0xFF)) * 134775813 + 1) & 0xFFFFFFFF
        keys[2] = crc_byte(keys[2], keys[1] >> 24)

    for byte in password:
        update(byte)
    crc = zlib.crc32(data)
    plain = bytes(range(1, 12)) + bytes([crc >> 24]) + data  # 12-byte header whose last byte checks the password
    secret = bytearray()
    for byte in plain:
        k = (keys[2] | 2) & 0xFFFF
        secret.append(byte ^ (((k * (k ^ 1)) >> 8) & 0xFF))
        update(byte)
    encoded = name.encode()
    # version 20, flag 1 (encrypted), method 0 (stored), time 0, date 0x21 (1980-01-01)
    fields = struct.pack("<HHHHHIII", 20, 1, 0, 0, 0x21, crc, len(secret), len(data))
    local = b"PK\x03\x04" + fields + struct.pack("<HH", len(encoded), 0) + encoded
    central = (b"PK\x01\x02" + struct.pack("<H", 20) + fields
               + struct.pack("<HHHHHII", len(encoded), 0, 0, 0, 0, 0, 0) + encoded)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(central), len(local) + len(secret), 0)
    return local + bytes(secret) + central + end
