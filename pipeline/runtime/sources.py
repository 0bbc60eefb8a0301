"""Frame sources and the capture thread.

A *source* opens and reads frames: a camera index, a video file, an RTSP/HTTP
stream, an image folder, a glob or one image. :class:`Capture` reads it on its own
thread. Live sources (cameras, streams) keep only the newest frame, so a slow model
never builds up latency; files hand over every frame unless ``pace`` asks for the
source's frame rate, which then drops what the model cannot keep up with. A source
that fails is reopened with exponential backoff and the run goes on; the gap is
counted.
"""

from __future__ import annotations

import glob as globlib
import logging
import queue
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import cv2
import numpy as np

from pipeline.core.errors import SourceError
from pipeline.core.images import IMAGE_SUFFIXES, ImageError, decode_file

log = logging.getLogger(__name__)

_SECRET_KEYS = re.compile(r"pass|pwd|token|secret|key|auth|sig", re.I)


def redact(source: str | int) -> str:
    """A source's name safe for logs and outputs: ``rtsp://user:pw@host`` → ``rtsp://***@host``.

    Query values whose key looks like a secret (``password``, ``token``, ``key``…)
    are masked too.
    """
    s = str(source)
    if "://" not in s:
        return s
    parts = urlsplit(s)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if _SECRET_KEYS.search(k) else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


# === Sources ===


class FrameSource:
    """What :class:`Capture` reads. ``read`` returns a frame, ``None`` at the end of a
    finite source, and raises when the device or stream fails. Once the capture thread
    has started, ``read``, ``close`` and a reopen's ``open`` run on it alone; ``close``
    may come after :meth:`Capture.stop` returns, or never where the process exits under
    a read that hangs.

    Attributes:
        name: for logs and outputs (credentials redacted).
        live: a camera or stream, where only the newest frame matters.
        fps: the source's frame rate, or None when it has none (images).
        position: index of the next frame, so a reopened file resumes there.
        restarts: how often a looped file started over.
    """

    name: str = ""
    live: bool = False
    fps: float | None = None
    position: int = 0
    restarts: int = 0

    def open(self) -> None:
        raise NotImplementedError

    def read(self) -> np.ndarray | None:
        raise NotImplementedError

    def file_of(self, index: int) -> str | None:
        """The file frame ``index`` came from, where frames are files (images)."""
        return None

    def close(self) -> None:
        pass


class VideoSource(FrameSource):
    """A camera index, a video file or a stream URL through ``cv2.VideoCapture``.

    Args:
        target: camera index, file path or URL.
        loop: restart a file at its end (kiosks, soak tests); ignored for live sources.
        timeout_ms: open and read timeout for streams, so a dead stream is noticed.
    """

    def __init__(self, target: str | int, loop: bool = False, timeout_ms: int = 5000) -> None:
        self.target = target
        self.live = isinstance(target, int) or "://" in str(target)
        self.name = redact(target) if not isinstance(target, int) else f"camera {target}"
        self.loop = loop and not self.live
        self.timeout_ms = timeout_ms
        self.cap: cv2.VideoCapture | None = None
        self.position = 0
        self._warned_short = False

    def open(self) -> None:
        if not self.live and not Path(str(self.target)).is_file():
            raise SourceError(f"{self.name}: no such file")
        if isinstance(self.target, str) and self.live:
            t = self.timeout_ms
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, t, cv2.CAP_PROP_READ_TIMEOUT_MSEC, t]
            cap = cv2.VideoCapture(self.target, cv2.CAP_ANY, params)
        else:
            cap = cv2.VideoCapture(self.target)
        if not cap.isOpened():
            raise SourceError(f"{self.name}: cannot open video source (not a video, or no such device/stream)")
        if not self.live and self.position:
            cap.set(cv2.CAP_PROP_POS_FRAMES, self.position)
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if 0 < fps < 1000 else None
        self.cap = cap

    def read(self) -> np.ndarray | None:
        ok, frame = self.cap.read()
        if not ok:
            self._check_end()
        if not ok and self.loop and self.position:
            self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            self.position = 0
            self.restarts += 1
            ok, frame = self.cap.read()
            if not ok:  # some files do not seek back from their end (a one-frame mp4): reopen
                self.close()
                self.open()
                ok, frame = self.cap.read()
        if not ok:
            return None
        self.position += 1
        return frame

    def _check_end(self) -> None:
        """A file that ends well before the frame count in its header was cut short (a
        copy stopped midway, a recording the camera's power cut): warn, once, or the run
        would look like one over a whole file."""
        if self.live or self.cap is None or self._warned_short:
            return
        header = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        # counts estimated from the duration (some containers) may be off by a frame or two
        if header > self.position + max(2, header // 100):
            self._warned_short = True
            log.warning(
                "%s: ended after frame %d of the %d its header gives: a truncated or damaged file?",
                self.name,
                self.position,
                header,
            )

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


class ImageSource(FrameSource):
    """Image files in order; an unreadable file is skipped with a counted warning."""

    def __init__(self, paths: list[Path], name: str) -> None:
        self.paths = paths
        self.name = name
        self.skipped = 0

    def open(self) -> None:
        if not self.paths:
            raise SourceError(f"{self.name}: no images ({', '.join(IMAGE_SUFFIXES)})")

    def read(self) -> np.ndarray | None:
        while self.position < len(self.paths):
            p = self.paths[self.position]
            self.position += 1
            try:
                return decode_file(p)  # training's definition of a readable image
            except ImageError as e:
                self.skipped += 1
                log.warning("skipped unreadable image %d (source_frame %d): %s", self.skipped, self.position - 1, e)
        return None

    def file_of(self, index: int) -> str | None:
        return str(self.paths[index]) if 0 <= index < len(self.paths) else None


def open_source(spec: str | int, loop: bool = False) -> FrameSource:
    """The source a ``--source`` value names (not opened yet).

    ``0`` is a camera index; ``scheme://…`` a stream; a folder, a glob (``*?[``) or an
    image file an image sequence; any other file a video.
    """
    s = str(spec)
    if s.isdigit():
        return VideoSource(int(s))
    if "://" in s:
        return VideoSource(s)
    p = Path(s)
    if p.is_dir():
        return ImageSource(sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES), s)
    if any(c in s for c in "*?[") and not p.exists():
        return ImageSource([Path(q) for q in sorted(globlib.glob(s)) if Path(q).suffix.lower() in IMAGE_SUFFIXES], s)
    if p.suffix.lower() in IMAGE_SUFFIXES:
        if not p.is_file():
            raise SourceError(f"{s}: no such file")
        return ImageSource([p], s)
    return VideoSource(s, loop=loop)


# === The capture thread ===


@dataclass
class Frame:
    """One captured frame: BGR uint8 ``image``, its ``index`` in the source (a reopened
    file resumes, a looped one restarts), the model-ready ``prepared`` input (when
    the capture was given a ``prepare``), and timings in ms."""

    image: np.ndarray
    index: int
    timestamp: float
    session: int = 0  # changes when the source starts over (a loop) or is reopened
    prepared: np.ndarray | None = None
    capture_ms: float = 0.0
    read_at: float = 0.0  # perf_counter when the source handed the frame over
    preprocess_ms: float = 0.0
    file: str | None = None  # the image file it came from (a folder or a glob of images)


def as_bgr(img: np.ndarray) -> np.ndarray:
    """Gray, BGRA, uint16 or float frames → 3-channel BGR uint8, for drawing and writing."""
    if img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3:
        return img
    from pipeline.core.images import to_rgb

    return cv2.cvtColor(to_rgb(img, bgr=True), cv2.COLOR_RGB2BGR)


def put_until_stopped(q: queue.Queue, item, stop: threading.Event) -> None:
    """Put ``item`` into a bounded queue, waiting for room; give up once ``stop`` is set.

    It always tries once, so an end marker still goes in when the reader has room."""
    while True:
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            if stop.is_set():
                return


class Capture:
    """Reads a source on a thread; :meth:`get` hands frames to the main loop.

    Args:
        source: an unopened :class:`FrameSource`; :meth:`start` opens it, so a bad
            source is an error before any frame is read.
        prepare: optional ``BGR frame → model input``. For files it runs on the
            capture thread, so that it overlaps inference (the tf.data prefetch idea);
            where only the newest frame is kept it runs in :meth:`get`, so frames that
            are dropped anyway cost no preprocessing.
        pace: hand files over at their frame rate, dropping frames the consumer has
            not taken (what a live source does by nature).
        reconnect_attempts: reopen tries after a failure before the run ends.
        backoff_s: first wait before reopening; doubles up to ``max_backoff_s``.
    """

    def __init__(
        self,
        source: FrameSource,
        prepare=None,
        pace: bool = False,
        queue_size: int = 4,
        reconnect_attempts: int = 10,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
    ) -> None:
        self.source = source
        self.prepare = prepare
        self.latest_only = source.live or pace
        self.pace = pace and not source.live
        self.reconnect_attempts = reconnect_attempts
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.dropped = self.reconnects = self.read_failures = self.bad_frames = 0
        self.lost = False  # the source failed and every reopen did too (not an end)
        self.gap_s = 0.0
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, queue_size))
        self._slot: Frame | None = None
        self._cond = threading.Condition()
        self._ended = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self._count = 0

    def start(self) -> Capture:
        self.source.open()
        self._thread.start()
        return self

    @property
    def fps(self) -> float | None:
        return self.source.fps

    def get(self, timeout: float = 0.5) -> Frame | None:
        """The next frame; ``None`` once the source has ended. Raises ``TimeoutError``
        when no frame came within ``timeout`` (the caller checks its stop flag and asks again)."""
        if not self.latest_only:
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError from None
            if item is None:
                self._queue.put(None)  # stay ended for later calls
            return item
        with self._cond:
            if not self._cond.wait_for(lambda: self._slot is not None or self._ended, timeout):
                raise TimeoutError
            frame, self._slot = self._slot, None
        if frame is None:
            return None
        try:
            return self._prepare(frame)
        except (cv2.error, ValueError) as e:
            self._skip_bad(e)
            raise TimeoutError from None  # the caller asks again, as after a timeout

    def stop(self, wait_s: float = 5.0) -> None:
        """Stop reading. The capture thread closes the source itself, when its read
        returns: closing it from here while a read or a reopen is still in native code
        (an RTSP stream's 5 s timeout, a camera that hangs for seconds) could crash the
        process before the run's final summary is written."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.ident is None:  # never started (the source did not open)
            self.source.close()
            return
        self._thread.join(timeout=wait_s)
        if self._thread.is_alive():
            log.warning(
                "%s: still in a read or a reopen after %g s; it is closed when that returns", self.source.name, wait_s
            )

    # --- the thread ---
    def _run(self) -> None:
        t_start = time.perf_counter()
        try:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                try:
                    img = self.source.read()
                except Exception as e:  # a failing device, stream or file: reopen, go on
                    log.warning("%s: read failed (%s: %s)", self.source.name, type(e).__name__, e)
                    img, failed = None, True
                else:
                    failed = img is None and self.source.live
                if failed:
                    if not self._reconnect():
                        self.lost = not self._stop.is_set()
                        break
                    continue
                if img is None:
                    break
                try:
                    frame = self._make_frame(img, t0)
                except (cv2.error, ValueError) as e:
                    self._skip_bad(e)
                    continue
                self._deliver(frame, t_start)
        finally:
            self._end()
            self.source.close()  # here, not in stop(): never under a read still going

    def _make_frame(self, img: np.ndarray, t0: float) -> Frame:
        read_at = time.perf_counter()
        img = as_bgr(img)
        t1 = time.perf_counter()
        session = self.source.restarts + self.reconnects
        index = self.source.position - 1
        frame = Frame(
            img,
            index,
            time.time(),
            session,
            capture_ms=(t1 - t0) * 1e3,
            read_at=read_at,
            file=self.source.file_of(index),
        )
        if not self.latest_only:
            self._prepare(frame)
        return frame

    def _skip_bad(self, e: Exception) -> None:
        """An empty or malformed frame: skipped and counted, never fatal."""
        self.bad_frames += 1
        log.warning("skipped bad frame %d from %s: %s", self.bad_frames, self.source.name, e)

    def _prepare(self, frame: Frame) -> Frame:
        if self.prepare is not None and frame.prepared is None:
            t0 = time.perf_counter()
            frame.prepared = self.prepare(frame.image)
            frame.preprocess_ms = (time.perf_counter() - t0) * 1e3
        return frame

    def _deliver(self, frame: Frame, t_start: float) -> None:
        if self.pace and self.source.fps:
            delay = t_start + self._count / self.source.fps - time.perf_counter()
            if delay > 0:
                self._stop.wait(delay)
        self._count += 1
        if self.latest_only:
            with self._cond:
                if self._slot is not None:
                    self.dropped += 1
                self._slot = frame
                self._cond.notify()
            return
        put_until_stopped(self._queue, frame, self._stop)

    def _reconnect(self) -> bool:
        """Reopen with exponential backoff; False when every attempt failed or we stopped."""
        self.read_failures += 1
        t0 = time.perf_counter()
        wait = self.backoff_s
        try:
            for attempt in range(1, self.reconnect_attempts + 1):
                self.source.close()
                if self._stop.wait(wait):
                    return False
                try:
                    self.source.open()
                except SourceError as e:
                    log.warning("reopen %d/%d failed: %s", attempt, self.reconnect_attempts, e)
                    wait = min(wait * 2, self.max_backoff_s)
                    continue
                self.reconnects += 1
                log.info("%s reopened after %d attempt(s)", self.source.name, attempt)
                return True
            log.error("%s: gave up after %d reopen attempts", self.source.name, self.reconnect_attempts)
            return False
        finally:
            self.gap_s += time.perf_counter() - t0

    def _end(self) -> None:
        if self.latest_only:
            with self._cond:
                self._ended = True
                self._cond.notify_all()
            return
        put_until_stopped(self._queue, None, self._stop)
