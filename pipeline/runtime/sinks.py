"""Where annotated frames go: a video file (encoded on its own thread) and a window."""

from __future__ import annotations

import logging
import os
import queue
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)

# Containers opencv-python's wheels write without extra codecs: mp4v .mp4 and MJPG .avi.
FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG"}


def check_video_path(path: Path) -> None:
    """Fail before any frame is read when the output cannot be written."""
    if path.suffix.lower() not in FOURCC:
        raise ValueError(f"{path}: unsupported video container {path.suffix!r}; use one of {sorted(FOURCC)}")
    check_output_file(path, "--output")


def check_output_file(path: Path, what: str) -> None:
    """Fail before any frame is read when ``path`` cannot be written (a folder, a file
    where its folder should be, no permission): found only at the end, the run's work
    would be lost. Writes and removes an empty file beside it, as the atomic write will
    (or, where its folder does not exist yet, a folder in the nearest one that does)."""
    path = Path(path)
    try:  # is_dir and exists raise on a folder we may not enter
        if path.is_dir():
            raise ValueError(f"{what} {path}: is a folder, not a file")
        existing = next(p for p in path.absolute().parents if p.exists())  # the root, at least
    except OSError as e:
        raise ValueError(f"{what} {path}: cannot be reached ({e.strerror or e})") from None
    if not existing.is_dir():
        raise ValueError(f"{what} {path}: {existing} is a file, not a folder")
    try:
        if existing == path.absolute().parent:
            fd, probe = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".check", dir=existing)
            os.close(fd)
            os.unlink(probe)
        else:
            os.rmdir(tempfile.mkdtemp(prefix=".edgepipe.", suffix=".check", dir=existing))
    except OSError as e:
        raise ValueError(f"{what} {path}: cannot write in {existing} ({e.strerror or e})") from None


class Throttle:
    """True at most once every ``seconds``: a warning that would repeat every second
    (a full disk under a camera that runs for days) reaches the log once a minute, with
    a running count, instead of flooding it (often onto the same full disk)."""

    def __init__(self, seconds: float = 60.0) -> None:
        self.seconds, self._last = seconds, float("-inf")

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self._last < self.seconds:
            return False
        self._last = now
        return True


class LiveLines:
    """A JSON-lines file for a camera or stream, which has no end to wait for: lines go
    to the file as they come, written out once a second, so ``tail -f`` follows the
    run and a crash loses at most the last second. It replaces the file, or with
    ``append`` (``--resume-counts``: a restarted service) carries it on, ending first a
    line that a power cut left unfinished so that the lines after it parse. Each write
    is of whole lines. A write that fails (the disk filled) loses its lines with a
    warning that counts them, and the run goes on: a counter that runs for days must
    not stop for its log. (From a file source the JSONL is written atomically at the
    end instead: it is a batch job's result.)"""

    def __init__(self, path: Path, append: bool = False, every_s: float = 1.0) -> None:
        self.path, self.every_s = Path(path), every_s
        self._pending: list[str] = []
        self._due = 0.0
        self.lost = 0  # lines a failed write lost
        self._warn, self._failing = Throttle(), False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # unbuffered: each flush is one write of whole lines; a+: the last byte can be read back
        self._f = open(self.path, "a+b" if append else "wb", buffering=0)
        self._line_ended = True  # the file ends with a whole line (or is empty)
        self._written = self._f.seek(0, os.SEEK_END)  # the file's length
        self._waiting = 0  # bytes in _pending (JSON lines are ASCII: json.dumps escapes the rest)
        if append and self._written > 0:
            self._f.seek(-1, os.SEEK_END)
            self._line_ended = self._f.read(1) == b"\n"

    @property
    def position(self) -> int:
        """Where the file will end once the lines given so far are written: a summary
        taken now records it, and ``--resume-counts`` replays the lines after it
        (:meth:`Tracking.replay`), which a crash left in the JSONL but not in the summary."""
        return self._written + self._waiting + (0 if self._line_ended or not self._waiting else 1)

    def write(self, line: str) -> None:
        self._pending.append(line)
        self._waiting += len(line)
        now = time.monotonic()
        if now >= self._due:
            self._due = now + self.every_s
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        data = (b"" if self._line_ended else b"\n") + "".join(self._pending).encode()
        done = 0
        try:
            while done < len(data):  # an unbuffered write may take part of it
                done += self._f.write(memoryview(data)[done:])
            if self._failing:
                self._failing = False
                log.warning("--jsonl %s: writing again (%d lines lost)", self.path, self.lost)
        except OSError as e:
            self.lost += len(self._pending)  # those not written whole: a line cut short is ended next time
            self._failing = True
            if self._warn():
                log.warning(
                    "--jsonl %s: %s; %d lines lost so far, the run goes on", self.path, e.strerror or e, self.lost
                )
        finally:
            if done:
                self._line_ended = data[done - 1] == ord("\n")
            self._written += done
        self._pending.clear()
        self._waiting = 0

    def close(self) -> None:
        if self._f.closed:
            return
        self.flush()
        try:
            os.fsync(self._f.fileno())
        except OSError as e:
            log.warning("--jsonl %s: %s", self.path, e.strerror or e)
        self._f.close()

    def __enter__(self) -> LiveLines:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class VideoSink:
    """Writes frames at ``fps`` on a writer thread, so encoding overlaps inference.

    The writer opens at the first frame's size; later frames of another size (an
    image folder) are resized to it. ``close`` drains the queue and finalises the file.
    """

    def __init__(self, path: Path, fps: float, queue_size: int = 16) -> None:
        self.path, self.fps = Path(path), float(fps)
        self.frames = 0
        self._size: tuple[int, int] | None = None
        self._writer: cv2.VideoWriter | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._run, name="video-writer", daemon=True)
        self._error: Exception | None = None

    def write(self, frame: np.ndarray) -> None:
        if self._writer is None:
            h, w = frame.shape[:2]
            fourcc = cv2.VideoWriter_fourcc(*FOURCC[self.path.suffix.lower()])
            self._writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, (w, h))
            if not self._writer.isOpened():
                raise OSError(f"{self.path}: cannot open a video writer ({FOURCC[self.path.suffix.lower()]})")
            self._size = (w, h)
            self._thread.start()
        if self._error is not None:
            raise OSError(f"{self.path}: writing failed: {self._error}")
        if (frame.shape[1], frame.shape[0]) != self._size:
            frame = cv2.resize(frame, self._size, interpolation=cv2.INTER_AREA)
        self._queue.put(frame)
        self.frames += 1

    def _run(self) -> None:
        while (frame := self._queue.get()) is not None:
            try:
                self._writer.write(frame)
            except cv2.error as e:  # keep draining so the main loop never blocks
                self._error = e

    def close(self) -> None:
        if self._writer is None:
            return
        self._queue.put(None)
        self._thread.join()
        self._writer.release()
        self._writer = None


class Display:
    """An OpenCV window; ``show`` returns False once the user pressed ``q`` or Esc,
    or closed the window. Without a GUI backend it logs once and stops showing."""

    def __init__(self, title: str) -> None:
        self.title = title
        self._ok = True
        self._opened = False

    def show(self, frame: np.ndarray) -> bool:
        if not self._ok:
            return True
        try:
            cv2.imshow(self.title, frame)
            key = cv2.waitKey(1) & 0xFF
            if self._opened and cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1:
                return False
        except cv2.error as e:
            log.warning("no display (%s); running headless", str(e).strip().splitlines()[-1])
            self._ok = False
            return True
        self._opened = True
        return key not in (ord("q"), 27)

    def close(self) -> None:
        if self._opened:
            cv2.destroyWindow(self.title)
