"""Image processing, pure and deterministic: decode, orient, bomb guard, RGB, crop, size gate, resize,
re-encode, MD5 and a 64-bit pHash. Every failure becomes a status string, never an exception."""

from __future__ import annotations

import contextlib
import hashlib
import io
import tarfile
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import imagehash
import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from warehouse.archives import read_member_bytes
from warehouse.contracts import MAX_PIXELS, check_bound, is_image_name

ImageFile.LOAD_TRUNCATED_IMAGES = False
# Pillow allocates image memory in 16 MB blocks, below glibc's largest mmap threshold (32 MB), so they come
# from per-thread malloc arenas that keep freed memory: 8 threads decoding 81 Mpx photos one after another held
# 2.7 GB. Blocks of 64 MB are mmapped and returned to the system when freed (587 MB for the same work under
# the pixel budget, bench/bench_pixel_budget.py). Small images still get blocks of their own size.
Image.core.set_block_size(64 << 20)


MAX_IMAGE_MEMBER_BYTES = (
    64 * 2**20
)  # an image file in someone's tar: far above a photograph, far below a bomb


def tar_images(path: str | Path, max_bytes: int = MAX_IMAGE_MEMBER_BYTES) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) of every regular image file in a tar, streamed; a member over `max_bytes`
    (declared or read) is refused with an `ArchiveError`. Member names are only labels: nothing is ever
    written to disk under them (absolute or `..` names cannot escape anywhere)."""
    with tarfile.open(path, mode="r|*") as tar:
        for member in tar:
            if member.isfile() and is_image_name(member.name):
                yield member.name, read_member_bytes(tar, member, max_bytes)


@dataclass(frozen=True)
class ImageConfig:
    min_side: int = field(default=224, metadata={"help": "drop images whose short side is smaller"})
    max_side: int = field(default=720, metadata={"help": "resize so the long side is at most this"})
    jpeg_quality: int = 90
    max_pixels: int = 89_478_485  # Pillow's own default bomb limit, made explicit
    encode: bool = True  # False: hashes only (evaluation sets), no JPEG re-encode
    # Decoded pixels being processed at once in one process, over all its threads: 8 threads on 81 Mpx
    # photos would otherwise hold about 6 GB. An image larger than this still runs, alone.
    max_pixels_in_flight: int = field(
        default=100_000_000,
        metadata={"help": "decoded pixels processed at once per worker process (a larger image runs alone)"},
    )
    pdq: bool = field(
        default=False, metadata={"help": "also a 256-bit PDQ hash (needs the `pdq` extra)"}
    )  # the paper\'s leak hash

    def __post_init__(self) -> None:
        check_bound("max_pixels", self.max_pixels, MAX_PIXELS, 1)
        check_bound("max_pixels_in_flight", self.max_pixels_in_flight, MAX_PIXELS, 1)


@dataclass
class ProcessedImage:
    status: str  # "ok" or a failure reason
    error: str | None = None
    jpeg: bytes | None = None
    md5: str | None = None
    phash: int | None = None
    phash_hex: str | None = None
    pdq_hex: str | None = None
    pdq_quality: int | None = None
    width: int | None = None
    height: int | None = None
    original_width: int | None = None
    original_height: int | None = None


PHASH_INPUT_SIDE = 128


def phash64(img: Image.Image) -> tuple[int, str]:
    """64-bit DCT pHash (imagehash) as a signed int64 (for Parquet/DuckDB) and as hex.

    imagehash shrinks to 32x32 with Lanczos; a box reduction by an integer factor first (short side kept at
    >= 128 px) makes that 8x cheaper and leaves the low-frequency DCT block the hash reads intact. Every image,
    evaluation images included, is hashed this same way, so hashes stay comparable."""
    factor = min(img.size) // PHASH_INPUT_SIDE
    if factor >= 2:
        img = img.reduce(factor)
    h = imagehash.phash(img)
    hex_ = str(h)
    value = int(hex_, 16)
    if value >= 1 << 63:
        value -= 1 << 64
    return value, hex_


def require_pdq() -> ModuleType:
    """pdqhash, or a clear error: PDQ was asked for, so running without it would silently drop a hash."""
    try:
        import pdqhash
    except ImportError as exc:
        raise RuntimeError(
            "PDQ hashing was requested (--pdq) but pdqhash is not installed: pip install -e '.[pdq]'"
        ) from exc
    return pdqhash


def pdq256(img: Image.Image) -> tuple[str, int]:
    """256-bit PDQ hash (Meta's, as the paper's leak check used) as 64 hex characters, and its quality 0-100."""
    bits, quality = require_pdq().compute(np.asarray(img))
    return np.packbits(bits.astype(np.uint8)).tobytes().hex(), int(quality)


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        return img.point(lambda v: v / 256).convert("L").convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")  # convert() would copy an RGB image


def clip_box(box: list[int] | None, width: int, height: int) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of an `x, y, w, h` box clipped to the image; None when nothing is left."""
    if not box:
        return None
    x, y, w, h = box
    left, top = max(0, x), max(0, y)
    right, bottom = min(width, x + w), min(height, y + h)
    if right - left <= 0 or bottom - top <= 0:
        return (0, 0, 0, 0)
    return left, top, right, bottom


class PixelBudget:
    """A per-process bound on decoded pixels in flight: a thread waits until its image fits, unless nothing
    else is in flight (so one image larger than the bound is never stuck)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self.peak = 0  # the most ever held at once, for tests and benchmarks
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        pixels = max(1, min(pixels, self.capacity))
        with self._cond:
            while self.used and self.used + pixels > self.capacity:
                self._cond.wait()
            self.used += pixels
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            with self._cond:
                self.used -= pixels
                self._cond.notify_all()


_budgets: dict[int, PixelBudget] = {}
_budgets_guard = threading.Lock()


def pixel_budget(capacity: int) -> PixelBudget:
    with _budgets_guard:
        return _budgets.setdefault(capacity, PixelBudget(capacity))


def _decoded_pixels(data: bytes, config: ImageConfig, crop_box: list[int] | None) -> int:
    """What decoding will hold, read from the header alone (JPEGs decode reduced by up to 8x, see below)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            scale = 1
            if crop_box is None and img.format == "JPEG":
                while scale < 8 and max(w, h) / (scale * 2) >= config.max_side:
                    scale *= 2
    except Exception:  # undecodable: process_image says why; it holds nothing big
        return 1
    return (w // scale) * (h // scale)


def process_image(data: bytes, config: ImageConfig, crop_box: list[int] | None = None) -> ProcessedImage:
    """Decode, check, transform and hash one image, within the process's pixel budget."""
    if not data:
        return ProcessedImage("empty_body", "zero-byte response")
    with pixel_budget(config.max_pixels_in_flight).hold(_decoded_pixels(data, config, crop_box)):
        return _process_image(data, config, crop_box)


def _process_image(data: bytes, config: ImageConfig, crop_box: list[int] | None) -> ProcessedImage:
    if not data:
        return ProcessedImage("empty_body", "zero-byte response")
    md5 = hashlib.md5(data)
    if crop_box:
        md5.update(f"|crop:{','.join(map(str, crop_box))}".encode())  # crops of one frame are distinct items
    out = ProcessedImage("ok", md5=md5.hexdigest())
    Image.MAX_IMAGE_PIXELS = config.max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            out.original_width, out.original_height = img.size
            if img.size[0] * img.size[1] > config.max_pixels:
                return ProcessedImage(
                    "decompression_bomb", f"{img.size[0]}x{img.size[1]} pixels", md5=out.md5
                )
            if crop_box is None and img.format == "JPEG" and max(img.size) > 2 * config.max_side:
                # Decode straight to a reduced size in the DCT domain (1/2, 1/4, 1/8), never below the final
                # size; the size gate below still reads the original size. Same path for every image,
                # evaluation images included, so their hashes stay comparable.
                ratio = config.max_side / max(img.size)
                img.draft("RGB", (int(img.size[0] * ratio) + 1, int(img.size[1] * ratio) + 1))
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return ProcessedImage("decompression_bomb", str(exc)[:200], md5=out.md5)
    except UnidentifiedImageError:
        return ProcessedImage("not_an_image", "body is not a decodable image", md5=out.md5)
    except (OSError, SyntaxError, ValueError) as exc:
        return ProcessedImage("corrupt_image", str(exc)[:200], md5=out.md5)
    try:
        source_format, source_mode = img.format, img.mode
        rotated = img.getexif().get(0x0112, 1) not in (1, None)  # EXIF Orientation
        if rotated:
            img = ImageOps.exif_transpose(img)
        img = to_rgb(img)
        if crop_box:
            box = clip_box(crop_box, *img.size)
            if box == (0, 0, 0, 0):
                return ProcessedImage("crop_outside_image", f"box {crop_box} outside {img.size}", md5=out.md5)
            img = img.crop(box)
        short = min(img.size) if crop_box else min(out.original_width, out.original_height)
        if short < config.min_side:
            out.status, out.error = "too_small", f"short side {short} < {config.min_side}"
            out.width, out.height = img.size
            return out
        # A JPEG already within the size cap, upright, RGB and uncropped is stored as sent: re-encoding would
        # only lose quality and time (about 10% of a typical corpus).
        keep_original = (
            config.encode
            and crop_box is None
            and source_format == "JPEG"
            and source_mode == "RGB"
            and not rotated
            and max(out.original_width, out.original_height) <= config.max_side
        )
        if max(img.size) > config.max_side:
            # Box filter (area average): a proper anti-aliased downscale, 1.6x faster than bilinear and 2.5x
            # faster than bicubic in Pillow on this hardware; only ever used to shrink.
            img.thumbnail((config.max_side, config.max_side), Image.Resampling.BOX, reducing_gap=2.0)
        if keep_original:
            out.jpeg = data
        elif config.encode:
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=config.jpeg_quality)
            out.jpeg = buf.getvalue()
        out.width, out.height = img.size
        out.phash, out.phash_hex = phash64(img)
        if config.pdq:
            out.pdq_hex, out.pdq_quality = pdq256(img)
    except (OSError, ValueError) as exc:
        return ProcessedImage("corrupt_image", str(exc)[:200], md5=out.md5)
    return out
