"""Still image outputs: the marks go in without touching the pixels, and the sink writes one frame or none."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from stream.exceptions import OutputError
from stream.frames import Frame
from stream.stills import (
    ImageFileSink,
    PhotoMetadata,
    mark_jpeg,
    mark_png,
    mark_webp,
    photo_metadata,
    xmp_packet,
)

TAGS = {"synthetic": "true", "comment": "Synthetic media: test", "encoder_app": "facestream 0", "title": "Ζωή"}


def _image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)


def test_png_marks_keep_the_pixels_and_any_text() -> None:
    image = _image()
    ok, buf = cv2.imencode(".png", image)
    assert ok
    marked = mark_png(buf.tobytes(), TAGS, xmp_packet(TAGS, learned=True))
    assert np.array_equal(cv2.imdecode(np.frombuffer(marked, np.uint8), cv2.IMREAD_COLOR), image)
    with Image.open(io.BytesIO(marked)) as im:
        im.load()  # every chunk's CRC is checked
        info = im.info
    assert info["synthetic"] == "true" and info["Comment"] == TAGS["comment"] and info["Software"] == "facestream 0"
    assert info["title"] == "Ζωή"  # not Latin-1: an iTXt chunk
    assert "compositeWithTrainedAlgorithmicMedia" in info["XML:com.adobe.xmp"]
    with pytest.raises(ValueError, match="not a PNG"):
        mark_png(b"GIF89a", TAGS, b"")


def test_jpeg_marks_keep_the_pixels_and_jfif_first() -> None:
    image = _image()
    ok, buf = cv2.imencode(".jpg", image)
    assert ok
    marked = mark_jpeg(buf.tobytes(), TAGS, xmp_packet(TAGS, learned=False))
    assert marked[2:4] == b"\xff\xe0" and marked[6:11] == b"JFIF\0"
    decoded = cv2.imdecode(np.frombuffer(marked, np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(decoded, cv2.imdecode(buf, cv2.IMREAD_COLOR))
    with Image.open(io.BytesIO(marked)) as im:
        assert im.info["comment"] == TAGS["comment"].encode()
        assert b"digitalsourcetype/compositeSynthetic" in im.info["xmp"]


@pytest.mark.parametrize("size", [(64, 48), (63, 47), (1, 1)])
@pytest.mark.parametrize("quality", [95, 101])  # lossy (VP8) and lossless (VP8L) bitstreams
def test_webp_marks_keep_the_pixels_in_the_extended_format(tmp_path: Path, size: tuple[int, int],
                                                           quality: int) -> None:
    w, h = size
    image = np.ascontiguousarray(_image()[:h, :w])
    buf = cv2.imencode(".webp", image, [cv2.IMWRITE_WEBP_QUALITY, quality])[1]
    icc, exif = b"profile" * 41, Image.Exif()
    exif[0x0112], exif[0x010F] = 6, "Test Camera Co"  # odd lengths: each chunk is padded to an even one
    carried = PhotoMetadata(icc=icc, exif=exif.tobytes())
    marked = mark_webp(buf.tobytes(), TAGS, xmp_packet(TAGS, learned=True), carried)
    assert marked[12:16] == b"VP8X" and len(marked) % 2 == 0
    decoded = cv2.imdecode(np.frombuffer(marked, np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(decoded, cv2.imdecode(buf, cv2.IMREAD_COLOR))
    with Image.open(io.BytesIO(marked)) as im:
        im.load()
        assert im.size == (w, h)  # the canvas the VP8X chunk gives
        assert im.info["icc_profile"] == icc
        assert "compositeWithTrainedAlgorithmicMedia" in im.info["xmp"].decode()
        assert TAGS["comment"] in im.info["xmp"].decode()
        assert im.getexif()[0x010F] == "Test Camera Co"
    plain = mark_webp(buf.tobytes(), TAGS, xmp_packet(TAGS, learned=False))
    with Image.open(io.BytesIO(plain)) as im:
        im.load()
        assert "icc_profile" not in im.info and "compositeSynthetic" in im.info["xmp"].decode()
    (tmp_path / "plain.webp").write_bytes(plain)
    assert photo_metadata(tmp_path / "plain.webp") == PhotoMetadata()
    with pytest.raises(ValueError, match="not a WebP"):
        mark_webp(b"RIFF\0\0\0\0WAVE", TAGS, b"")
    with pytest.raises(ValueError, match="simple-format"):
        mark_webp(marked, TAGS, b"")


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp"])
def test_a_photos_colour_profile_and_exif_go_into_every_kind_of_output(tmp_path: Path, suffix: str) -> None:
    # A profile over one JPEG segment (64 KB), as a printer or camera embeds with its lookup tables, is split
    # into numbered APP2 segments and joined again.
    icc = bytes(np.random.default_rng(1).integers(0, 256, 150_000, dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 8, "Test Camera Co"  # turned; Make
    photo = tmp_path / f"in{suffix}"
    Image.fromarray(_image()).save(photo, exif=exif.tobytes(), icc_profile=icc)
    carried = photo_metadata(photo)
    assert carried.icc == icc
    for fmt, mark in ((".png", mark_png), (".jpg", mark_jpeg), (".webp", mark_webp)):
        buf = cv2.imencode(fmt, _image())[1]
        out = mark(buf.tobytes(), TAGS, xmp_packet(TAGS, learned=False), carried)
        with Image.open(io.BytesIO(out)) as im:
            im.load()
            assert im.info["icc_profile"] == icc
            assert im.getexif()[0x010F] == "Test Camera Co" and im.getexif()[0x0112] == 1  # upright now
        assert np.array_equal(cv2.imdecode(np.frombuffer(out, np.uint8), cv2.IMREAD_COLOR),
                              cv2.imdecode(buf, cv2.IMREAD_COLOR))


@pytest.mark.parametrize("mode", ["RGB", "I;16B"])  # Pillow writes these little- and big-endian
def test_a_tiffs_colour_profile_is_carried(tmp_path: Path, mode: str) -> None:
    icc = bytes(np.random.default_rng(2).integers(0, 256, 3_001, dtype=np.uint8))
    photo = tmp_path / "scan.tif"
    Image.fromarray(_image()).convert(mode).save(photo, icc_profile=icc)
    assert photo.read_bytes()[:2] == (b"II" if mode == "RGB" else b"MM")
    assert photo_metadata(photo).icc == icc
    plain = tmp_path / "plain.tif"
    Image.fromarray(_image()).convert(mode).save(plain)
    assert photo_metadata(plain) == PhotoMetadata()


def test_what_cannot_be_read_as_exif_or_a_profile_is_left_out(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    data = cv2.imencode(".jpg", _image())[1].tobytes()
    bad.write_bytes(data[:2] + b"\xff\xe1\x00\x0eExif\x00\x00XXXXXX" + data[2:])  # no TIFF header
    assert photo_metadata(bad) == PhotoMetadata()
    assert photo_metadata(tmp_path / "missing.jpg") == PhotoMetadata()
    plain = tmp_path / "plain.png"
    plain.write_bytes(cv2.imencode(".png", _image())[1].tobytes())
    assert photo_metadata(plain) == PhotoMetadata()


async def test_image_sink_takes_one_frame_and_leaves_nothing_when_aborted(tmp_path: Path) -> None:
    frame = Frame(index=0, image=cv2.cvtColor(_image(), cv2.COLOR_BGR2RGB))
    sink = ImageFileSink(tmp_path / "a.png", tmp_path / "in.jpg")
    await sink.write(frame)
    with pytest.raises(OutputError, match="more than one frame"):
        await sink.write(frame)
    await sink.abort()
    assert list(tmp_path.iterdir()) == []
    empty = ImageFileSink(tmp_path / "b.png", tmp_path / "in.jpg")
    with pytest.raises(OutputError, match="no frames"):
        await empty.close()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OutputError, match="use one of"):
        ImageFileSink(tmp_path / "c.gif", tmp_path / "in.jpg")
    with pytest.raises(OutputError, match="same file as INPUT"):
        ImageFileSink(tmp_path / "in.png", tmp_path / "in.png")
    sink = ImageFileSink(tmp_path / "d.png", tmp_path / "in.jpg")
    await sink.write(frame)
    stats = await sink.close()
    assert stats.frames == 1 and stats.bytes == (tmp_path / "d.png").stat().st_size
    assert np.array_equal(cv2.imread(str(tmp_path / "d.png")), _image())
