"""Tests of image loading/saving (i2spp_jax.io): conversions with notes, clear refusals."""

import numpy as np
import pytest
from PIL import Image

from i2spp_jax import io

TOL = 1 / 127.5  # one 8-bit level on the [-1, 1] scale


def test_roundtrip_rgb(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    img, notes = io.load_image(str(tmp_path / "a.png"), 16)
    assert notes == [] and img.shape == (16, 16, 3) and img.dtype == np.float32
    np.testing.assert_allclose(img, a / 127.5 - 1, atol=1e-6)
    io.save_image(str(tmp_path / "b.png"), img)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "b.png")), a)


@pytest.mark.parametrize("mode,size,expect", [
    ("L", (16, 16), ["converted from mode L to RGB"]),
    ("P", (16, 16), ["converted from mode P to RGB"]),
    ("CMYK", (16, 16), ["converted from mode CMYK to RGB"]),
    ("RGB", (40, 20), ["centre-cropped from 40x20 to 20x20", "resized from 20x20 to 16x16"]),
    ("RGB", (8, 8), ["resized from 8x8 to 16x16 (upsampled: expect a blurry target)"]),
])
def test_conversions_are_reported(tmp_path, mode, size, expect):
    p = str(tmp_path / "x.png") if mode != "CMYK" else str(tmp_path / "x.jpg")
    Image.new(mode, size).save(p)
    img, notes = io.load_image(p, 16)
    assert img.shape == (16, 16, 3) and notes == expect


def test_alpha_composited_on_white(tmp_path):
    a = np.zeros((16, 16, 4), np.uint8); a[..., 0] = 255; a[:8, :, 3] = 255  # top opaque red, bottom clear
    Image.fromarray(a, "RGBA").save(tmp_path / "a.png")
    img, notes = io.load_image(str(tmp_path / "a.png"), 16)
    assert notes == ["transparent pixels composited onto white"]
    np.testing.assert_allclose(img[0, 0], [1, -1, -1], atol=TOL)
    np.testing.assert_allclose(img[-1, 0], [1, 1, 1], atol=TOL)


def test_greyscale_generator(tmp_path):
    Image.new("RGB", (16, 16), (255, 255, 255)).save(tmp_path / "a.png")
    img, notes = io.load_image(str(tmp_path / "a.png"), 16, channels=1)
    assert img.shape == (16, 16, 1) and notes == ["converted from mode RGB to L"]


def test_refusals_name_the_cause(tmp_path):
    with pytest.raises(FileNotFoundError, match="no image at"):
        io.load_image(str(tmp_path / "missing.png"), 16)
    (tmp_path / "junk.png").write_bytes(b"this is not an image")
    with pytest.raises(io.ImageError, match="not an image pillow can read"):
        io.load_image(str(tmp_path / "junk.png"), 16)
    Image.new("RGB", (64, 64), (10, 20, 30)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(io.ImageError, match="corrupt or truncated"):
        io.load_image(str(tmp_path / "trunc.png"), 16)
    Image.fromarray(np.zeros((16, 16), np.float32), "F").save(tmp_path / "f.tiff")
    with pytest.raises(io.ImageError, match="mode 'F'"):
        io.load_image(str(tmp_path / "f.tiff"), 16)


def test_difference_map():
    a = np.zeros((4, 4, 3), np.float32)
    b = a.copy(); b[0, 0] = 0.5
    d = io.difference_map(a, b, gain=4.0)
    assert d.shape == (4, 4, 3) and d[1, 1, 0] == -1 and d[0, 0, 0] == 1


def test_a_folder_an_empty_file_and_a_decompression_bomb_are_named(tmp_path, monkeypatch):
    with pytest.raises(io.ImageError, match="is a folder, not an image"):
        io.load_image(str(tmp_path), 16)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(io.ImageError, match=r"is empty \(0 bytes\)"):
        io.load_image(str(tmp_path / "empty.png"), 16)
    # pillow's limits scaled down (the real ones are 89 and 179 Mpx): between them, decoded without a
    # warning; over the second, refused as an ImageError naming the size (it was an uncaught pillow error)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40 * 40)
    Image.new("L", (50, 50), 128).save(tmp_path / "large.png")
    Image.new("L", (60, 60), 128).save(tmp_path / "bomb.png")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert io.load_image(str(tmp_path / "large.png"), 16)[0].shape == (16, 16, 3)
    with pytest.raises(io.ImageError, match=r"too large to decode safely \(Image size \(3600 pixels\)"):
        io.load_image(str(tmp_path / "bomb.png"), 16)


def test_save_image_refuses_integer_pixels_and_a_missing_folder(tmp_path):
    """Library audit: uint8 pixels were written clipped to white, and a missing folder was reported
    as the temporary file's (PATH.tmp.png)."""
    img = np.zeros((4, 4, 3), np.float32)
    with pytest.raises(ValueError, match="is an integer \\(uint8\\) image"):
        io.save_image(str(tmp_path / "a.png"), (img + 128).astype(np.uint8))
    with pytest.raises(FileNotFoundError, match=f"cannot write {tmp_path}/no/a.png: no folder {tmp_path}/no$"):
        io.save_image(str(tmp_path / "no" / "a.png"), img)
    io.save_image(str(tmp_path / "a.png"), img)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_image_size_names_a_truncated_png(tmp_path):
    """pillow 13 decodes a PNG to read its EXIF chunk: a file cut short raised a bare OSError from
    image_size (embed_folder recorded 'image file is truncated', without the file's name or cause)."""
    path = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(io.ImageError, match="a.png: the image data is corrupt or truncated"):
        io.image_size(str(path))
