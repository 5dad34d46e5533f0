"""Robust loading: every mode becomes RGB, every bad file fails with its name and a reason."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import natural_image
from imutility.images import ImageLoadError, list_images, load_image, to_rgb


@pytest.mark.parametrize("name", ["truncated", "empty", "text"])
def test_bad_files_raise_named_error(bad_folder, name):
    with pytest.raises(ImageLoadError) as e:
        load_image(bad_folder[name])
    assert str(bad_folder[name]) in str(e.value)
    assert e.value.reason


def test_reasons_say_what_is_wrong(bad_folder):
    reasons = {}
    for k in ("truncated", "empty", "text"):
        with pytest.raises(ImageLoadError) as e:
            load_image(bad_folder[k])
        reasons[k] = e.value.reason
    assert "truncated" in reasons["truncated"] or "corrupt" in reasons["truncated"]
    assert "empty" in reasons["empty"]
    assert "not an image" in reasons["text"]


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageLoadError):
        load_image(tmp_path)


@pytest.mark.parametrize("name", ["cmyk", "png16", "rgba", "good0"])
def test_unusual_modes_become_rgb(bad_folder, name):
    img = load_image(bad_folder[name])
    assert img.mode == "RGB" and img.size == (160, 120)


def test_16bit_keeps_its_brightness(bad_folder):
    img16 = load_image(bad_folder["png16"])
    ref = np.asarray(natural_image(seed=4).convert("L"), dtype=float)
    assert np.abs(np.asarray(img16, dtype=float)[..., 0] - ref).max() <= 1  # not clipped to white


def test_alpha_is_composited_over_white():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(to_rgb(rgba)).min() == 255
    half = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    assert 120 <= np.asarray(to_rgb(half))[0, 0, 0] <= 130


@pytest.mark.parametrize("mode", ["L", "1", "P", "LA", "I", "F", "CMYK", "YCbCr", "PA"])
def test_every_mode_converts(mode):
    src = natural_image(8, 6)
    img = src.convert("L").convert(mode) if mode in ("I", "F", "1", "LA") else src.convert(mode)
    out = to_rgb(img)
    assert out.mode == "RGB" and out.size == (8, 6)


def test_exif_orientation_is_applied(tmp_path):
    img = natural_image(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW when displayed
    p = tmp_path / "rot.jpg"
    img.save(p, exif=exif, quality=95)
    assert load_image(p).size == (20, 40)


def test_decompression_bomb_limit(tmp_path):
    p = tmp_path / "big.png"
    Image.new("RGB", (200, 200)).save(p)
    with pytest.raises(ImageLoadError, match="exceeds the limit"):
        load_image(p, max_pixels=10_000)
    assert load_image(p, max_pixels=None).size == (200, 200)


def test_load_from_bytes():
    import io

    buf = io.BytesIO()
    natural_image().save(buf, "PNG")
    assert load_image(buf.getvalue()).size == (160, 120)
    with pytest.raises(ImageLoadError, match="<bytes>"):
        load_image(b"garbage")


def test_list_images_lists_bad_files_too(bad_folder, tmp_path):
    (tmp_path / "mixed" / "readme.txt").write_text("x")
    names = [p.name for p in list_images(tmp_path / "mixed")]
    assert "readme.txt" not in names
    assert {"notes.jpg", "empty.jpg", "truncated.jpg"} <= set(names)
    assert names == sorted(names)
    with pytest.raises(FileNotFoundError):
        list_images(tmp_path / "absent")


def test_max_pixels_is_the_limit_both_ways(tmp_path):
    """100 MP: above Pillow's 89.5 MP warning, under its 179 MP error; our limit decides, up or down."""
    from PIL import Image

    from imutility.images import ImageLoadError, load_image

    p = tmp_path / "big.png"
    Image.new("L", (10_000, 10_000), 128).save(p, optimize=False)
    assert load_image(p).size == (10_000, 10_000)  # the documented 178.9 MP default, not Pillow's 89.5 MP
    with pytest.raises(ImageLoadError, match="exceeds the limit of 50000000"):
        load_image(p, max_pixels=50_000_000)
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (300, 300)).save(tiny)
    with pytest.raises(ImageLoadError, match="exceeds"):
        load_image(tiny, max_pixels=1000)
