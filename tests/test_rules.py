"""The cheap rules: the JPEG quality read from a file's quantisation tables, bits per pixel."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from conftest import natural_image
from imutility.rules import NotJpegError, bits_per_pixel, jpeg_quality, quantization_tables


def _jpeg(img: Image.Image, q: int | None, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **({"quality": q} if q is not None else {}), **kw)
    return buf.getvalue()


@pytest.mark.parametrize("q", [1, 2, 5, 10, 23, 50, 75, 90, 100])
def test_quality_read_back_from_libjpeg_files(q):
    assert jpeg_quality(_jpeg(natural_image(64, 48, seed=q), q)) == q


def test_grayscale_and_subsampling_and_files(tmp_path):
    assert jpeg_quality(_jpeg(natural_image().convert("L"), 10)) == 10
    assert jpeg_quality(_jpeg(natural_image(), 37, subsampling=0)) == 37
    p = tmp_path / "x.jpg"
    p.write_bytes(_jpeg(natural_image(), 12))
    assert jpeg_quality(p) == 12 and len(quantization_tables(p)[0]) == 64


def test_custom_tables_get_the_nearest_quality():
    q10 = quantization_tables(_jpeg(natural_image(), 10))
    nudged = {k: [min(255, v + 1) for v in t] for k, t in q10.items()}
    assert abs(jpeg_quality(_jpeg(natural_image(), None, qtables=nudged)) - 10) <= 1


def test_not_a_jpeg_is_refused(tmp_path):
    buf = io.BytesIO()
    natural_image().save(buf, "PNG")
    with pytest.raises(NotJpegError, match="not a JPEG"):
        jpeg_quality(buf.getvalue())


def test_bits_per_pixel():
    assert bits_per_pixel(1000, 100, 80) == pytest.approx(1.0)
    assert bits_per_pixel(0, 0, 0) == 0.0
