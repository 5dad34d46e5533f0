"""Distortions: real codecs, reproducible randomness, presets and specs."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from conftest import natural_image, require_shared
from imutility.distort import (
    JPEG,
    Chain,
    GaussianBlur,
    GaussianNoise,
    Rescale,
    WebP,
    get_preset,
    list_presets,
    parse_distortion,
    resolve_distortions,
    seeded_rng,
)
from imutility.images import load_image
from imutility.names import UnknownNameError


def test_jpeg_bytes_are_a_real_jpeg_and_decode_to_the_image():
    img = natural_image()
    out = JPEG(10)(img)
    assert out.data[:2] == b"\xff\xd8" and out.format == "jpeg" and out.suffix == ".jpg"
    assert out.bpp == pytest.approx(8 * len(out.data) / (160 * 120))
    again = Image.open(io.BytesIO(out.data))
    assert again.format == "JPEG"
    np.testing.assert_array_equal(np.asarray(again.convert("RGB")), np.asarray(out.image))
    assert out.image.size == img.size and out.image.mode == "RGB"


def test_jpeg_is_deterministic_and_lossy():
    img = natural_image()
    a, b = JPEG(5)(img), JPEG(5)(img)
    assert a.data == b.data
    assert not np.array_equal(np.asarray(a.image), np.asarray(img))


def test_bpp_falls_with_quality_on_synthetic_image():
    img = natural_image(256, 192)
    bpps = [JPEG(q)(img).bpp for q in (90, 50, 20, 10, 5, 2)]
    assert all(x > y for x, y in zip(bpps, bpps[1:], strict=False)), bpps


def test_bpp_falls_with_quality_on_real_photos():
    photos = require_shared("data", "photos")
    for p in sorted(photos.iterdir())[:3]:
        img = load_image(p)
        preset = sorted(get_preset("paper-jpeg9").distortions, key=lambda d: d.level)
        bpps = [d(img).bpp for d in preset]
        assert all(x < y for x, y in zip(bpps, bpps[1:], strict=False)), (p.name, bpps)
        assert bpps[0] < 0.5 < bpps[-1]  # q=2 is a fraction of a bit per pixel, q=90 well above


def test_webp_blur_noise_rescale():
    img = natural_image()
    w = WebP(10)(img)
    assert w.data[:4] == b"RIFF" and w.format == "webp"
    for d in (GaussianBlur(2), GaussianNoise(20), Rescale(3)):
        out = d(img, seeded_rng(0, "x"))
        assert out.format == "png" and out.image.size == img.size
        diff = np.abs(np.asarray(out.image, float) - np.asarray(img, float)).mean()
        assert diff > 1.0, d.spec
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(out.data)).convert("RGB")), np.asarray(out.image))


def test_noise_is_reproducible_from_seed_and_key():
    img = natural_image()
    n = GaussianNoise(10)
    a = n(img, seeded_rng(1, "a.jpg", n.spec)).data
    assert a == n(img, seeded_rng(1, "a.jpg", n.spec)).data
    assert a != n(img, seeded_rng(2, "a.jpg", n.spec)).data
    assert a != n(img, seeded_rng(1, "b.jpg", n.spec)).data


def test_blur_strength_grows_with_sigma():
    img = natural_image()
    diffs = [np.abs(np.asarray(GaussianBlur(s)(img).image, float) - np.asarray(img, float)).mean()
             for s in (0.5, 2, 5)]
    assert diffs[0] < diffs[1] < diffs[2]


def test_chain_applies_in_order_and_stores_last_codec():
    img = natural_image()
    c = Chain([GaussianBlur(1), JPEG(20)])
    out = c(img)
    assert out.format == "jpeg"
    expected = JPEG(20)(GaussianBlur(1)(img).image)
    assert out.data == expected.data
    assert c.spec == "blur:sigma=1+jpeg:q=20" and c.level == 20


@pytest.mark.parametrize("spec", ["jpeg:q=10", "webp:q=5", "blur:sigma=1.5", "noise:sigma=10",
                                  "rescale:factor=2", "rescale:factor=2+jpeg:q=20"])
def test_spec_round_trip(spec):
    assert parse_distortion(spec).spec == spec
    assert parse_distortion(parse_distortion(spec).spec) == parse_distortion(spec)


@pytest.mark.parametrize("bad", ["jpeg:q=0", "jpeg:q=101", "jpeg:q=2.5", "jpg:q=10", "jpeg:quality=5",
                                 "blur:sigma=-1", "jpeg:q", "", "rescale:factor=1"])
def test_bad_specs(bad):
    with pytest.raises((ValueError, UnknownNameError)):
        parse_distortion(bad)


def test_unknown_family_suggests():
    with pytest.raises(UnknownNameError, match="jpeg"):
        parse_distortion("jpg:q=10")


def test_presets():
    assert {"paper-jpeg9", "heldout-jpeg"} <= set(list_presets())
    paper = get_preset("paper-jpeg9")
    assert len(paper.distortions) == 9
    heldout = {d.spec for d in get_preset("heldout-jpeg").distortions}
    assert heldout and not heldout & set(paper.specs)
    for name in list_presets():
        p = get_preset(name)
        assert len({d.slug for d in p.distortions}) == len(p.distortions)
    with pytest.raises(UnknownNameError, match="paper-jpeg9"):
        get_preset("paper-jpg9")


def test_resolve_distortions_dedups():
    ds = resolve_distortions("paper-jpeg9", ["jpeg:q=5", "jpeg:q=7"])
    assert len(ds) == 10 and ds[-1].spec == "jpeg:q=7"
    with pytest.raises(ValueError):
        resolve_distortions(None, [])


def test_distortion_refuses_non_rgb():
    with pytest.raises(ValueError, match="RGB"):
        JPEG(10)(Image.new("L", (8, 8)))
