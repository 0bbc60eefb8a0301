"""Image decoding and the one preprocessing function shared by every stage.

Training (inside tf.data), evaluation on LiteRT, export calibration and the video
runner all call :func:`prepare` and :func:`normalize`, so a model never sees pixels
prepared two different ways.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import cv2
import numpy as np

from pipeline.core.errors import DataError, ImageError

T = TypeVar("T")
log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")

# Models take RGB in [0, 1]: (pixel - MEAN) / STD. With these values a uint8 input
# tensor quantized with scale 1/255 and zero point 0 is the raw pixel itself, which
# is what a phone camera hands over.
MEAN = 0.0
STD = 255.0


@dataclass(frozen=True)
class InputSpec:
    """What a model expects as input; stored in every export's sidecar."""

    size: int
    channels: int = 3
    resize: Literal["stretch", "letterbox"] = "stretch"
    mean: float = MEAN
    std: float = STD

    def to_dict(self) -> dict:
        return {
            "size": [self.size, self.size],
            "layout": "NHWC",
            "channels": self.channels,
            "color_space": "RGB" if self.channels == 3 else "GRAYSCALE",
            "resize": self.resize,
            "normalization": {"mean": [self.mean] * self.channels, "std": [self.std] * self.channels},
        }

    @classmethod
    def from_dict(cls, d: dict) -> InputSpec:
        return cls(
            size=int(d["size"][0]),
            channels=int(d["channels"]),
            resize=d.get("resize", "stretch"),
            mean=float(d["normalization"]["mean"][0]),
            std=float(d["normalization"]["std"][0]),
        )


def decode_file(path: str | Path) -> np.ndarray:
    """The one definition of a readable image, shared by training, evaluation and the
    runner: the file's pixels as OpenCV decodes them (BGR or BGRA, gray, 8 or 16 bit),
    a JPEG turned upright by its EXIF orientation.

    A JPEG cut short is refused although OpenCV would return its top half over gray:
    a half-frame is no training image, and the runner must agree with training.

    Raises:
        ImageError: naming the file, when it is missing, empty, truncated or not decodable.
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise ImageError(f"{path}: cannot read image ({e.strerror})") from e
    if data.size == 0:
        raise ImageError(f"{path}: empty file")
    jpeg = data[:2].tobytes() == b"\xff\xd8"
    if jpeg and not jpeg_complete(data.tobytes()):
        raise ImageError(f"{path}: truncated JPEG (no end-of-image marker after its last scan)")
    # A phone stores a portrait photo sideways with an EXIF orientation, and labelling
    # tools show (and annotate) it upright; IMREAD_UNCHANGED would ignore the tag. A JPEG
    # has no alpha and 8 bits, so ANYCOLOR loses nothing and turns it upright.
    img = cv2.imdecode(data, cv2.IMREAD_ANYCOLOR if jpeg else cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise ImageError(f"{path}: not a decodable image (corrupt or unsupported format)")
    return img


def jpeg_complete(raw: bytes) -> bool:
    """Whether a JPEG's image data ends: the marker segments are walked from the start
    (by their lengths, so an EXIF thumbnail inside APP1 is skipped) to the first scan
    (SOS), which an end-of-image marker (EOI) must follow. Byte stuffing keeps EOI out
    of the entropy-coded data; data appended after the image (a Motion Photo's video)
    is never looked at. A header the walk cannot follow is left to the decoder."""
    i, n = 2, len(raw)
    while i + 4 <= n:
        if raw[i] != 0xFF:
            return True  # not a segment boundary: let the decoder judge
        marker = raw[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # TEM, RSTn, SOI: no length
            i += 2
            continue
        if marker == 0xD9:
            return False  # EOI before any scan: no image data
        length = (raw[i + 2] << 8) | raw[i + 3]
        if marker == 0xDA:
            return raw.find(b"\xff\xd9", i + 2 + length) != -1
        i += 2 + length
    return False  # cut inside the header


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file (:func:`decode_file`) to RGB uint8."""
    return to_rgb(decode_file(path), bgr=True)


def to_rgb(img: np.ndarray, bgr: bool = False) -> np.ndarray:
    """Any frame (gray, BGR/RGB, BGRA/RGBA, uint16, float) → 3-channel RGB uint8."""
    if img.dtype != np.uint8:
        if np.issubdtype(img.dtype, np.floating):
            img = np.clip(img * (255.0 if img.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        else:
            img = (img >> 8).astype(np.uint8) if img.dtype == np.uint16 else np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
        return cv2.cvtColor(img.reshape(img.shape[:2]), cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB if bgr else cv2.COLOR_RGBA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if bgr else img


def prepare(img: np.ndarray, spec: InputSpec, bgr: bool = False) -> np.ndarray:
    """Resize (stretch or letterbox) and set the channel count: → (S, S, C) uint8.

    Accepts gray, RGB(A) or BGR(A) frames of any size; ``bgr`` says the frame came
    from OpenCV.
    """
    rgb = to_rgb(img, bgr=bgr)
    h, w = rgb.shape[:2]
    s = spec.size
    if (h, w) != (s, s):
        g = geometry((h, w), spec)
        if spec.resize == "letterbox":
            canvas = np.full((s, s, 3), 114, np.uint8)
            canvas[g.top : g.top + g.height, g.left : g.left + g.width] = resize(rgb, g.width, g.height)
            rgb = canvas
        else:
            rgb = resize(rgb, s, s)
    if spec.channels == 1:
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[..., None]
    return rgb


def resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize with anti-aliasing when shrinking, at a fraction of ``INTER_AREA``'s cost.

    ``INTER_AREA`` is the right filter for shrinking, but on a non-integer factor it
    takes OpenCV's slow general path (640×480 → 192×144: about 1.3 ms, more than a
    small detector's inference). So shrink by integer factors that divide the frame
    exactly (``INTER_AREA``'s fast box-filter path) while the factor left is 2 or more,
    then finish with ``INTER_LINEAR``, which does not alias below 2 (0.2 ms here).
    """
    while True:
        h, w = img.shape[:2]
        top = min(w // width, h // height)
        k = next((k for k in range(top, 1, -1) if w % k == 0 and h % k == 0), 0)
        if not k:
            break
        img = cv2.resize(img, (w // k, h // k), interpolation=cv2.INTER_AREA)
    if img.shape[:2] == (height, width):
        return img
    shrink = min(w // width, h // height) >= 2  # no exact factor left: the general path
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


@dataclass(frozen=True)
class Geometry:
    """Where a frame lands in the model input: scaled to ``width × height`` at
    ``(left, top)``. Stretch fills the input; letterbox keeps the aspect ratio."""

    scale_x: float
    scale_y: float
    left: int
    top: int
    width: int
    height: int

    def to_frame(self, boxes: np.ndarray) -> np.ndarray:
        """``x1 y1 x2 y2`` boxes in input pixels → frame pixels (any leading shape)."""
        b = np.asarray(boxes, np.float32).copy()
        b[..., 0::2] = (b[..., 0::2] - self.left) / self.scale_x
        b[..., 1::2] = (b[..., 1::2] - self.top) / self.scale_y
        return b

    def to_input(self, boxes: np.ndarray) -> np.ndarray:
        """Frame-pixel boxes → model-input pixels (the inverse of :meth:`to_frame`)."""
        b = np.asarray(boxes, np.float32).copy()
        b[..., 0::2] = b[..., 0::2] * self.scale_x + self.left
        b[..., 1::2] = b[..., 1::2] * self.scale_y + self.top
        return b

    def crop(self, plane: np.ndarray) -> np.ndarray:
        """The part of an input-sized map (e.g. a class mask) that covers the frame."""
        return plane[self.top : self.top + self.height, self.left : self.left + self.width]


def geometry(frame_hw: tuple[int, int], spec: InputSpec) -> Geometry:
    """The resize :func:`prepare` applies to a frame of ``(h, w)``: shared by the
    readers (boxes → input), the post-processing (input → frame) and the runner."""
    h, w = int(frame_hw[0]), int(frame_hw[1])
    s = spec.size
    if spec.resize == "letterbox":
        scale = s / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        return Geometry(nw / w, nh / h, (s - nw) // 2, (s - nh) // 2, nw, nh)
    return Geometry(s / w, s / h, 0, 0, s, s)


def normalize(x, spec: InputSpec):
    """Pixels → the float the model was trained on: ``(x - mean) / std``.

    NumPy arrays of any dtype; inside tf.data, a float tensor (the pipelines cast it):
    this module stays free of TensorFlow, so the runtime imports it on a device that
    has none.
    """
    if isinstance(x, np.ndarray):
        x = x.astype(np.float32)
    elif not getattr(x.dtype, "is_floating", True):
        # A tf.Tensor: TensorFlow is loaded already (it made the tensor), so take it
        # from sys.modules instead of an import this module would carry everywhere.
        tf = sys.modules["tensorflow"]
        x = tf.cast(x, tf.float32)
    return (x - spec.mean) / spec.std


def with_full_range(images: list[np.ndarray]) -> list[np.ndarray]:
    """Calibration images of which the first has one black and one white pixel.

    int8 calibration sets the input tensor's scale and zero point from the min and
    max it sees; pinned to pixels 0 and 255 they map the uint8 input exactly onto the
    model's normalization (scale 1/255 for [0, 1], 1/128 with zero point 128 for
    (p - 128) / 128). MediaPipe feeds raw camera pixels to a uint8 model and ignores
    the metadata's normalization, so any other range would shift what it sees.
    """
    if not images:
        return images
    first = np.array(images[0], copy=True)
    flat = first.reshape(-1, first.shape[-1])
    flat[0], flat[-1] = 0, 255
    return [first, *images[1:]]


class SkipCounter:
    """Counts the unreadable files one stage skipped (tf.data's worker threads add to it
    concurrently) and logs each path once, with a running count."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.paths: set[str] = set()

    def add(self, path: str, reason: str) -> None:
        with self._lock:
            if path in self.paths:
                return
            self.paths.add(path)
            n = len(self.paths)
        log.warning("skipped unreadable image %d: %s", n, reason)

    def __len__(self) -> int:
        return len(self.paths)

    def attempt(self, path, read: Callable[[], T]) -> T | None:
        """``read()``, or None with ``path`` counted as skipped: what an input pipeline
        does mid-epoch, where an exception would stop training. Our errors name the
        file already; anything else a decoder raises gets the path in front."""
        try:
            return read()
        except DataError as e:  # ImageError included
            self.add(str(path), str(e))
        except Exception as e:  # noqa: BLE001 - any decoder failure is a bad file, not a crash
            self.add(str(path), f"{path}: {e}")
        return None


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted for determinism."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
