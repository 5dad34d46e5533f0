"""Distortions: real codecs (Pillow's libjpeg-turbo and libwebp) and the paper's "more distortions" future work.

A :class:`Distortion` maps an RGB image to a :class:`DistortedImage`: the decoded pixels a model
will see, the encoded bytes to store (the codec's own bitstream, never a re-encode) and the bits
per pixel. Everything random draws from the generator it is given, so a run is reproducible from
its seed. Distortions are named by a spec string such as ``jpeg:q=10`` or ``blur:sigma=1+jpeg:q=10``
(:func:`parse_distortion`), and grouped into presets (:func:`get_preset`, :func:`list_presets`).
"""

from __future__ import annotations

import hashlib
import io
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFilter

from imutility.errors import ImutilityError, SettingError
from imutility.names import UnknownNameError


class DistortedImage:
    """A distorted image: the bytes to store (``data``, ``format``, ``bpp``) and the decoded pixels.

    For codecs the pixels are decoded from ``data`` on first access of :attr:`image`, so a job
    that only writes files never pays for the decode.
    """

    __slots__ = ("data", "format", "bpp", "_image")

    def __init__(self, data: bytes, format: str, bpp: float, image: Image.Image | None = None):
        self.data = data
        self.format = format  # "jpeg", "webp" or "png": the format of ``data``
        self.bpp = bpp  # bits per pixel of ``data``
        self._image = image

    @property
    def image(self) -> Image.Image:
        if self._image is None:
            img = Image.open(io.BytesIO(self.data))
            img.load()
            self._image = img.convert("RGB")
        return self._image

    @property
    def suffix(self) -> str:
        return SUFFIXES[self.format]


#: the file suffix of each format a distortion writes
SUFFIXES = {"jpeg": ".jpg", "webp": ".webp", "png": ".png"}


def _bpp(data: bytes, img: Image.Image) -> float:
    return 8.0 * len(data) / (img.width * img.height)


def _lossless(img: Image.Image) -> DistortedImage:
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=1)
    data = buf.getvalue()
    return DistortedImage(data, "png", _bpp(data, img), image=img)


class Distortion(ABC):
    """One distortion at one level. Subclasses set ``family`` and implement :meth:`_apply`."""

    family: str = ""
    #: whether the output depends on the random generator (so callers can skip seeding otherwise)
    random: bool = False

    @property
    @abstractmethod
    def params(self) -> dict[str, float]:
        """Parameters in spec order, e.g. ``{"q": 10}``."""

    @property
    def spec(self) -> str:
        """Canonical name, parseable by :func:`parse_distortion`."""
        args = ",".join(f"{k}={_fmt(v)}" for k, v in self.params.items())
        return f"{self.family}:{args}"

    @property
    def slug(self) -> str:
        """Folder-safe name of the spec, e.g. ``jpeg_q10``."""
        args = "_".join(f"{k}{_fmt(v)}" for k, v in self.params.items())
        return f"{self.family}_{args}"

    @property
    def level(self) -> float:
        """The distortion's main parameter, for plots and per-level tables."""
        return float(next(iter(self.params.values())))

    def __call__(self, img: Image.Image, rng: np.random.Generator | None = None) -> DistortedImage:
        if img.mode != "RGB":
            raise ValueError(f"distortions take RGB images (got mode {img.mode}); load with imutility.images")
        return self._apply(img, rng if rng is not None else np.random.default_rng(0))

    @abstractmethod
    def _apply(self, img: Image.Image, rng: np.random.Generator) -> DistortedImage: ...

    def __repr__(self) -> str:
        return f"<Distortion {self.spec}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Distortion) and other.spec == self.spec

    def __hash__(self) -> int:
        return hash(self.spec)


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


class JPEG(Distortion):
    """Baseline JPEG through Pillow (libjpeg-turbo), 4:2:0 chroma subsampling, standard tables."""

    family = "jpeg"

    def __init__(self, q: int, subsampling: int = 2):
        if not 1 <= int(q) <= 100 or int(q) != q:
            raise ValueError(f"JPEG quality must be an integer in 1..100, got {q}")
        self.q = int(q)
        self.subsampling = subsampling

    @property
    def params(self) -> dict[str, float]:
        return {"q": self.q}

    def encode(self, img: Image.Image) -> bytes:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=self.q, subsampling=self.subsampling, optimize=False)
        return buf.getvalue()

    def _apply(self, img, rng):
        data = self.encode(img)
        return DistortedImage(data, "jpeg", _bpp(data, img))


class WebP(Distortion):
    """Lossy WebP through Pillow (libwebp)."""

    family = "webp"

    def __init__(self, q: int, method: int = 4):
        if not 0 <= int(q) <= 100 or int(q) != q:
            raise ValueError(f"WebP quality must be an integer in 0..100, got {q}")
        self.q = int(q)
        self.method = method

    @property
    def params(self) -> dict[str, float]:
        return {"q": self.q}

    def _apply(self, img, rng):
        buf = io.BytesIO()
        img.save(buf, "WEBP", quality=self.q, method=self.method, lossless=False)
        data = buf.getvalue()
        return DistortedImage(data, "webp", _bpp(data, img))


class GaussianBlur(Distortion):
    """Gaussian blur with standard deviation ``sigma`` pixels (Pillow's ``GaussianBlur(radius=sigma)``)."""

    family = "blur"

    def __init__(self, sigma: float):
        if sigma <= 0:
            raise ValueError(f"blur sigma must be > 0, got {sigma}")
        self.sigma = float(sigma)

    @property
    def params(self) -> dict[str, float]:
        return {"sigma": self.sigma}

    def _apply(self, img, rng):
        return _lossless(img.filter(ImageFilter.GaussianBlur(radius=self.sigma)))


class GaussianNoise(Distortion):
    """Additive white Gaussian noise, ``sigma`` in 8-bit grey levels, clipped and rounded."""

    family = "noise"
    random = True

    def __init__(self, sigma: float):
        if sigma <= 0:
            raise ValueError(f"noise sigma must be > 0, got {sigma}")
        self.sigma = float(sigma)

    @property
    def params(self) -> dict[str, float]:
        return {"sigma": self.sigma}

    def _apply(self, img, rng):
        arr = np.asarray(img, dtype=np.float32)
        noisy = arr + rng.normal(0.0, self.sigma, size=arr.shape).astype(np.float32)
        out = Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8), "RGB")
        return _lossless(out)


class Rescale(Distortion):
    """Downscale by ``factor`` then upscale back (bicubic both ways): resolution loss at the same size."""

    family = "rescale"

    def __init__(self, factor: float):
        if factor <= 1:
            raise ValueError(f"rescale factor must be > 1, got {factor}")
        self.factor = float(factor)

    @property
    def params(self) -> dict[str, float]:
        return {"factor": self.factor}

    def _apply(self, img, rng):
        w, h = img.size
        small = img.resize((max(1, round(w / self.factor)), max(1, round(h / self.factor))),
                           Image.Resampling.BICUBIC, reducing_gap=None)
        return _lossless(small.resize((w, h), Image.Resampling.BICUBIC))


class Chain(Distortion):
    """Distortions applied in order; stored as the last step's bitstream (e.g. blur then JPEG)."""

    family = "chain"

    def __init__(self, steps: Sequence[Distortion]):
        if len(steps) < 2:
            raise ValueError("a chain needs at least two steps")
        self.steps = tuple(s for step in steps for s in (step.steps if isinstance(step, Chain) else (step,)))
        self.random = any(s.random for s in self.steps)

    @property
    def params(self) -> dict[str, float]:
        # the last step's parameter is the "level" a chain is swept over
        out: dict[str, float] = {}
        for s in self.steps:
            out.update({f"{s.family}.{k}": v for k, v in s.params.items()})
        return out

    @property
    def level(self) -> float:
        return self.steps[-1].level

    @property
    def spec(self) -> str:
        return "+".join(s.spec for s in self.steps)

    @property
    def slug(self) -> str:
        return "+".join(s.slug for s in self.steps)

    def _apply(self, img, rng):
        out = None
        for s in self.steps:
            out = s(img, rng)
            img = out.image
        assert out is not None
        return out


DISTORTION_FAMILIES: dict[str, type[Distortion]] = {
    cls.family: cls for cls in (JPEG, WebP, GaussianBlur, GaussianNoise, Rescale)
}


class DistortionSpecError(ImutilityError, ValueError):
    """A distortion spec that cannot be parsed (bad syntax, unknown argument, bad value): a usage error."""


def parse_distortion(spec: str) -> Distortion:
    """Build a distortion from its spec: ``jpeg:q=10``, ``noise:sigma=5``, ``rescale:factor=2+jpeg:q=20``."""
    parts = [p.strip() for p in spec.split("+") if p.strip()]
    if not parts:
        raise DistortionSpecError("empty distortion spec")
    steps = [_parse_one(p) for p in parts]
    return steps[0] if len(steps) == 1 else Chain(steps)


def _parse_one(spec: str) -> Distortion:
    family, _, args = spec.partition(":")
    family = family.strip().lower()
    if family not in DISTORTION_FAMILIES:
        raise UnknownNameError("distortion", family, DISTORTION_FAMILIES)
    kwargs: dict[str, float] = {}
    for item in filter(None, (a.strip() for a in args.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise DistortionSpecError(f"bad distortion argument {item!r} in {spec!r}: expected name=value")
        try:
            num = float(value)
        except ValueError as e:
            raise DistortionSpecError(f"bad value {value!r} for {key!r} in {spec!r}") from e
        kwargs[key.strip()] = int(num) if num.is_integer() and key.strip() == "q" else num
    import inspect

    accepted = [p for p in inspect.signature(DISTORTION_FAMILIES[family]).parameters if p != "self"]
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        raise DistortionSpecError(f"{family!r} takes {', '.join(accepted)}; got {', '.join(unknown)} in {spec!r} "
                                  f"(e.g. {family}:{accepted[0]}=...)")
    try:
        return DISTORTION_FAMILIES[family](**kwargs)
    except (TypeError, ValueError) as e:
        raise DistortionSpecError(f"bad arguments for {family!r} in {spec!r}: {e}") from e


# --------------------------------------------------------------------------------------------
# presets
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preset:
    """A named sweep of distortion levels."""

    name: str
    description: str
    distortions: tuple[Distortion, ...] = field(repr=False)

    @property
    def specs(self) -> list[str]:
        return [d.spec for d in self.distortions]


def _jpeg(*qs: int) -> tuple[Distortion, ...]:
    return tuple(JPEG(q) for q in qs)


#: Training levels. The paper used nine JPEG levels without naming them; on 150 sample photos and
#: three classifiers, q in {2,5,8,10,15,20,30,50,75} put nearly every non-useful label at q <= 5, so
#: six of our nine levels sit in the transition zone q = 2..12, one is moderate and two are high.
PAPER_JPEG9 = _jpeg(2, 3, 4, 5, 6, 8, 12, 25, 90)
#: Held-out levels for the paper's "bitrates other than used for training" (Section V-B).
HELDOUT_JPEG = _jpeg(7, 10, 15, 35, 50, 75)

_PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("paper-jpeg9", "nine JPEG qualities, dense in the transition zone: 2,3,4,5,6,8,12,25,90",
               PAPER_JPEG9),
        Preset("heldout-jpeg", "JPEG qualities absent from paper-jpeg9: 7,10,15,35,50,75", HELDOUT_JPEG),
        Preset("jpeg15", "paper-jpeg9 and heldout-jpeg together, by quality: 2,3,4,5,6,7,8,10,12,15,25,35,50,75,90",
               tuple(sorted(PAPER_JPEG9 + HELDOUT_JPEG, key=lambda d: d.level))),
        Preset("webp6", "WebP qualities 0,2,5,10,25,75", tuple(WebP(q) for q in (0, 2, 5, 10, 25, 75))),
        Preset("jpeg-dense", "JPEG qualities 10,15,...,95: where the useful range of a network lives (rate control)",
               tuple(JPEG(q) for q in range(10, 100, 5))),
        Preset("webp-dense", "WebP qualities 5,10,...,95 (rate control)", tuple(WebP(q) for q in range(5, 100, 5))),
        Preset("blur5", "Gaussian blur sigma 0.5,1,2,3,5 px",
               tuple(GaussianBlur(s) for s in (0.5, 1, 2, 3, 5))),
        Preset("noise5", "Gaussian noise sigma 5,10,20,35,50 grey levels",
               tuple(GaussianNoise(s) for s in (5, 10, 20, 35, 50))),
        Preset("rescale5", "bicubic down- and up-scaling by 1.5,2,3,4,6",
               tuple(Rescale(f) for f in (1.5, 2, 3, 4, 6))),
        Preset("blur-jpeg", "blur sigma 1 then JPEG q 5,10,20,50",
               tuple(Chain([GaussianBlur(1), JPEG(q)]) for q in (5, 10, 20, 50))),
        Preset("rescale-jpeg", "downscale-upscale by 2 then JPEG q 5,10,20,50",
               tuple(Chain([Rescale(2), JPEG(q)]) for q in (5, 10, 20, 50))),
    )
}


def list_presets() -> list[str]:
    """Names of the built-in presets."""
    return list(_PRESETS)


def get_preset(name: str) -> Preset:
    """A built-in preset by name (close names are suggested on a miss)."""
    try:
        return _PRESETS[name]
    except KeyError:
        raise UnknownNameError("preset", name, _PRESETS) from None


def resolve_distortions(preset: str | None = None, specs: Sequence[str] = ()) -> tuple[Distortion, ...]:
    """Distortions from a preset name and/or explicit specs, duplicates dropped, order kept."""
    out: list[Distortion] = list(get_preset(preset).distortions) if preset else []
    out += [parse_distortion(s) for s in specs]
    if not out:
        raise SettingError("no distortion given: name a preset or at least one spec")
    return tuple(dict.fromkeys(out))


def resolve_levels(values: Sequence[str]) -> list[str] | None:
    """Specs and preset names, mixed (``--train-distortion``, a config's level list), as the specs they stand for,
    in order, duplicates dropped; None when none are given."""
    presets = set(list_presets())
    specs: list[str] = []
    for v in values:
        specs += [d.spec for d in (resolve_distortions(v) if v in presets else resolve_distortions(None, (v,)))]
    return list(dict.fromkeys(specs)) or None


def seeded_rng(seed: int, *keys: str) -> np.random.Generator:
    """A generator that depends only on ``seed`` and ``keys`` (not on process or order)."""
    words = [int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "little") for k in keys]
    return np.random.default_rng(np.random.SeedSequence([seed, *words]))
