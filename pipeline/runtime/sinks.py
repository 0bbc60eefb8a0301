"""Where annotated frames go: a video file (encoded on its own thread), annotated
copies of an image source's photos, and a window."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np

from pipeline.core.errors import RunError
from pipeline.core.images import IMAGE_SUFFIXES
from pipeline.core.rundir import atomic_path, write_bytes

log = logging.getLogger(__name__)

# Containers opencv-python's wheels write without extra codecs: mp4v .mp4 and MJPG .avi.
FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG"}


def output_kind(path: Path) -> str:
    """What ``--output`` names: ``"video"`` (a container's suffix, or an unknown one,
    which :func:`check_output` refuses), ``"image"`` (an image's suffix: the one photo
    of a one-image source, annotated) or ``"images"`` (a folder, or a path without a
    suffix: an annotated copy of each photo of an image source, under its name)."""
    suffix = Path(path).suffix.lower()
    if Path(path).is_dir() or not suffix:
        return "images"
    return "image" if suffix in IMAGE_SUFFIXES else "video"


def check_output(path: Path) -> None:
    """Fail before any frame is read when ``--output`` cannot be written."""
    kind = output_kind(path)
    if kind == "images":
        existing = next(p for p in (path, *path.absolute().parents) if p.exists())  # the root, at least
        if not existing.is_dir():
            raise ValueError(f"--output {path}: {existing} is a file, not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ValueError(f"--output {path}: cannot write in {existing} (permission denied)")
        return
    if kind == "video" and path.suffix.lower() not in FOURCC:
        raise ValueError(
            f"{path}: unsupported video container {path.suffix!r}; use one of {sorted(FOURCC)} (or, for an "
            f"image source, a folder or an image file: {', '.join(IMAGE_SUFFIXES)})"
        )
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
        if path.exists() and not path.is_file():  # /dev/null, a pipe: the rename at the end would replace it
            raise ValueError(
                f"{what} {path}: is not a regular file (a device or a pipe); outputs are written to a file "
                "beside it and renamed over it when complete"
            )
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


_TAIL = 64  # bytes before a JSONL's offset that a summary fingerprints (LiveLines.tail_crc32)


def tail_crc32(data: bytes) -> int:
    """The fingerprint of a JSONL's end that a summary records with its offset: the
    CRC-32 of its last ``_TAIL`` bytes. ``--resume-counts`` replays the lines after the
    offset only where the file still ends so there (not rotated or replaced since)."""
    return zlib.crc32(data[-_TAIL:])


def ends_as(f, offset: int, crc: int) -> bool:
    """Whether the binary file ``f``, cut at ``offset``, ends as :func:`tail_crc32` ``crc`` says."""
    f.seek(max(0, offset - _TAIL))
    return tail_crc32(f.read(offset - f.tell())) == crc


class LiveLines:
    """A JSON-lines file for a camera or stream, which has no end to wait for: lines go
    to the file as they come, written out once a second, so ``tail -f`` follows the
    run and a crash loses at most the last second. It replaces the file, or with
    ``append`` (``--resume-counts``: a restarted service) carries it on, ending first a
    line that a power cut left unfinished so that the lines after it parse. Each write
    is of whole lines. A write that fails (the disk filled) loses its lines with a
    warning that counts them, and the run goes on: a counter that runs for days must
    not stop for its log. (From a file source the JSONL is written atomically at the
    end instead, it is a batch job's result; or with ``--resume-counts`` added to the
    file at the end, :class:`BatchLines`.)

    It survives log rotation either way logrotate does it: always opened to append
    (O_APPEND), after a ``copytruncate`` the lines go to the emptied file's start, not
    past a hole of zero bytes; and when the path no longer names the open file (renamed
    or deleted: logrotate's default), the next write opens a new one there, as
    ``logging.handlers.WatchedFileHandler`` does."""

    def __init__(self, path: Path, append: bool = False, every_s: float = 1.0) -> None:
        self.path, self.every_s = Path(path), every_s
        self._pending: list[str] = []
        self._due = 0.0
        self.lost = 0  # lines a failed write lost
        self.reopened = 0  # files opened anew after a rotation
        self._warn, self._failing = Throttle(), False
        self._waiting = 0  # bytes in _pending (JSON lines are ASCII: json.dumps escapes the rest)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._open(truncate=not append)

    def _open(self, truncate: bool = False) -> None:
        """Opens the path (the state changes only once it is open and read)."""
        # unbuffered: each flush is one write of whole lines; a+: appended (O_APPEND), and
        # the last bytes can be read back
        f = open(self.path, "a+b", buffering=0)
        try:
            if truncate:
                f.truncate(0)
            st = os.fstat(f.fileno())
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - _TAIL))
            tail = f.read(_TAIL)  # the file's last bytes, for the summary's fingerprint
        except BaseException:
            f.close()
            raise
        self._f, self._id, self._written, self._tail = f, (st.st_dev, st.st_ino), size, tail
        self._line_ended = not tail or tail.endswith(b"\n")  # ends with a whole line, or is empty

    @property
    def position(self) -> int:
        """Where the file will end once the lines given so far are written: a summary
        taken now records it, and ``--resume-counts`` replays the lines after it
        (:meth:`Tracking.replay`), which a crash left in the JSONL but not in the summary."""
        return self._written + self._waiting + (0 if self._line_ended or not self._waiting else 1)

    @property
    def tail_crc32(self) -> int:
        """:func:`tail_crc32` of the file as it will end at :attr:`position`."""
        ending = b"" if self._line_ended or not self._waiting else b"\n"
        return tail_crc32(self._tail + ending + "".join(self._pending)[-_TAIL:].encode())

    def _rotated(self) -> bool:
        """The path names another file than the open one, or none: renamed away."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return True
        except OSError:  # unreachable for now: keep writing where we are
            return False
        return (st.st_dev, st.st_ino) != self._id

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
        if self._rotated():
            old = self._f
            try:
                self._open()
            except OSError as e:  # keep the old file: its lines are not lost, only rotated with it
                if self._warn():
                    log.warning("--jsonl %s: cannot open it anew after a rotation (%s)", self.path, e.strerror or e)
            else:
                self.reopened += 1
                log.info("--jsonl %s: the file was rotated away; writing a new one", self.path)
                try:
                    old.close()
                except OSError:  # a deferred write error of the rotated file (NFS): not this one's
                    pass
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
                self._tail = (self._tail + data[max(0, done - _TAIL) : done])[-_TAIL:]
                expected = self._written = self._written + done
                try:  # where the write ended: the file's end (appended), also after a copytruncate
                    self._written = self._f.tell()
                    if self._written != expected:  # emptied (copytruncate) or written by another: read its end
                        self._f.seek(max(0, self._written - _TAIL))
                        self._tail = self._f.read(self._written - self._f.tell())
                except OSError:
                    pass
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


class BatchLines:
    """The JSONL of a file source counted on with ``--resume-counts`` (a day's videos,
    one run each): this run's lines go to a temporary file beside it and are added to
    it when the run ends well (through :class:`LiveLines`, so a line left unfinished is
    ended first); a run that fails adds none, as its counts reach no summary. Until
    then :attr:`position` and :attr:`tail_crc32` are the file's as it was, which the
    summaries written meanwhile record with the counts they hold; a run that dies
    while adding its lines leaves them past that offset, and the next one cuts them
    off. Appending, not rewriting the whole file, keeps each run's writes to its own
    lines (the file grows by gigabytes a day)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        start = LiveLines(self.path, append=True)  # the file as it is: its end and fingerprint
        self.position, self.tail_crc32, self.lost = start.position, start.tail_crc32, 0
        start.close()
        fd, tmp = tempfile.mkstemp(
            prefix=f".{self.path.stem}.", suffix=self.path.suffix or ".tmp", dir=self.path.parent
        )
        self._tmp = Path(tmp)
        self._f = os.fdopen(fd, "w")

    def write(self, line: str) -> None:
        self._f.write(line)

    def __enter__(self) -> BatchLines:
        return self

    def __exit__(self, exc_type, *_) -> None:
        try:
            self._f.close()
            if exc_type is None:
                self._append()
        except OSError as e:  # the JSONL cannot be opened now: this run's lines stay where they are
            raise RunError(
                f"--jsonl {self.path}: cannot add this run's lines to it ({e.strerror or e}); they are in {self._tmp}"
            ) from None
        else:
            self._tmp.unlink(missing_ok=True)

    def _append(self) -> None:
        out = LiveLines(self.path, append=True, every_s=float("inf"))
        with open(self._tmp) as f:
            for k, line in enumerate(f, 1):
                out.write(line)
                if k % 4096 == 0:
                    out.flush()
        out.close()
        self.position, self.tail_crc32, self.lost = out.position, out.tail_crc32, out.lost


class StdoutLines:
    """``--jsonl -``: the JSON lines on standard output as they come, for a pipe into
    another program (an MQTT or a Kafka bridge, jq). They are written on a thread of
    their own, so a reader that stalls (a bridge that hangs, ``| less`` paused) never
    stalls the run: past ``queue_size`` lines waiting, lines are dropped and counted,
    with a warning at most once a minute. A reader that goes away (a broken pipe) loses
    the lines from there on with one warning. Either way the run goes on, and its
    counts still reach ``--summary-json``. At the end the lines still waiting get
    ``close_wait_s`` to go out."""

    def __init__(self, stream=None, queue_size: int = 1024, close_wait_s: float = 2.0) -> None:
        self._out = stream if stream is not None else sys.stdout
        if self._out is None:  # started with standard output closed (``>&-``)
            raise OSError("standard output is closed")
        self._out.flush()  # whatever is buffered goes before the lines
        try:
            self._fd: int | None = self._out.fileno()
        except (AttributeError, OSError, ValueError):  # a stream in memory (a test's capture)
            self._fd = None
        self.close_wait_s = close_wait_s
        self.dropped = 0  # lines the queue had no room for (this thread's count)
        self.failed = 0  # lines the writer could not write (the writer's count)
        self._gone = self._abandoned = False
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._warn = Throttle()
        self._done = threading.Event()
        # a daemon: a reader that never reads again must not keep the process from exiting
        threading.Thread(target=self._run, name="jsonl-stdout", daemon=True).start()

    @property
    def lost(self) -> int:
        return self.dropped + self.failed

    def write(self, line: str) -> None:
        if self._gone:  # the reader went away: nothing to queue for
            self.dropped += 1
            return
        try:
            self._queue.put_nowait(line)
        except queue.Full:
            self.dropped += 1
            if self._warn():
                log.warning(
                    "--jsonl -: the reader does not keep up; %d lines dropped so far, the run goes on", self.lost
                )

    def _run(self) -> None:
        try:
            while (line := self._queue.get()) is not None:
                if self._abandoned:  # close gave up on the reader: close counts the rest
                    self.failed += 1
                    break
                if self._gone:
                    self.failed += 1
                    continue
                try:
                    self._write(line)
                except OSError as e:  # BrokenPipeError, or EIO from a terminal that closed
                    self._gone, self.failed = True, self.failed + 1
                    log.warning("--jsonl -: %s; the lines from here on are lost, the run goes on", e.strerror or e)
                    self._silence()
        finally:
            self._done.set()

    def _write(self, line: str) -> None:
        if self._fd is None:
            self._out.write(line)
            self._out.flush()
            return
        data = memoryview(line.encode())
        while data:
            try:
                data = data[os.write(self._fd, data) :]
            except BlockingIOError:  # a non-blocking standard output whose reader is behind: wait
                select.select([], [self._fd], [], 1.0)

    def _silence(self) -> None:
        """Anything left in the stream's buffer would fail again at exit, with a traceback."""
        try:
            fd = os.open(os.devnull, os.O_WRONLY)
        except OSError:
            return
        try:
            os.dup2(fd, self._out.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        finally:
            os.close(fd)

    def close(self) -> None:
        try:
            self._queue.put(None, timeout=self.close_wait_s)
            done = self._done.wait(self.close_wait_s)
        except queue.Full:
            done = False
        if not done:  # a reader that stalls at the end: the rest is lost
            # taken off the queue here, so the writer, if the reader wakes before the
            # process exits, does not send lines already counted lost
            self._abandoned = True
            while True:
                try:
                    self.dropped += self._queue.get_nowait() is not None
                except queue.Empty:
                    break
            log.warning("--jsonl -: the reader stopped reading; %d lines lost", self.lost)

    def __enter__(self) -> StdoutLines:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class VideoSink:
    """Writes frames at ``fps`` on a writer thread, so encoding overlaps inference.

    The writer opens at the first frame's size; later frames of another size (an
    image folder) are resized to it. ``close`` drains the queue and finalises the file.
    """

    def __init__(self, path: Path, fps: float, queue_size: int = 16, shown: Path | None = None) -> None:
        """``shown``: the name errors give, where ``path`` is a temporary file beside it."""
        self.path, self.fps = Path(path), float(fps)
        self.shown = Path(shown or path)
        self.frames = 0
        self._size: tuple[int, int] | None = None
        self._writer: cv2.VideoWriter | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._run, name="video-writer", daemon=True)
        self._error: Exception | None = None
        self._raised = False  # the writer's error went out through write()

    def write(self, frame: np.ndarray, file: str | None = None) -> None:
        """``file``: the photo the frame came from (unused: a video is one file)."""
        if self._writer is None:
            h, w = frame.shape[:2]
            fourcc = cv2.VideoWriter_fourcc(*FOURCC[self.path.suffix.lower()])
            writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, (w, h))
            if not writer.isOpened():  # kept out of self._writer: close() then has nothing to drain
                writer.release()
                raise OSError(f"{self.shown}: cannot open a video writer ({FOURCC[self.path.suffix.lower()]})")
            self._writer = writer
            self._size = (w, h)
            self._thread.start()
        if self._error is not None:
            self._raised = True
            raise OSError(f"{self.shown}: writing failed: {self._error}")
        if (frame.shape[1], frame.shape[0]) != self._size:
            frame = cv2.resize(frame, self._size, interpolation=cv2.INTER_AREA)
        self._queue.put(frame)
        self.frames += 1

    def _run(self) -> None:
        while (frame := self._queue.get()) is not None:
            try:
                self._writer.write(frame)
            except Exception as e:  # noqa: BLE001 - keep draining so the main loop never blocks
                self._error = e

    def close(self) -> None:
        if self._writer is None:
            return
        self._queue.put(None)
        self._thread.join()
        self._writer.release()
        self._writer = None
        if self._error is not None and not self._raised:  # on the last frames: no write() came after
            log.warning(
                "--output %s: writing failed (%s); the video is kept as far as it was written", self.shown, self._error
            )


class ImageFiles:
    """``--output`` for an image source: each photo annotated at its own size, into a
    folder under its own name (or, for a one-image source, at the path given), each file
    written whole (atomically) as soon as it is done. A video would resize every photo
    to the first one's size. Two photos of one name (a glob over folders) get ``-1``,
    ``-2``... on the later ones."""

    def __init__(self, target: Path, single: bool = False) -> None:
        self.target, self.single = Path(target), single
        self.frames = 0
        self._names: set[str] = set()

    def write(self, frame: np.ndarray, file: str | None = None) -> None:
        path = self.target
        if not self.single:
            name = Path(file).name if file else f"frame_{self.frames:06d}.png"
            stem, suffix, k = Path(name).stem, Path(name).suffix, 0
            while name in self._names:
                k += 1
                name = f"{stem}-{k}{suffix}"
            self._names.add(name)
            path = self.target / name
        ok, data = cv2.imencode(path.suffix, frame)
        if not ok:
            raise OSError(f"{path}: cannot encode the annotated image as {path.suffix}")
        write_bytes(path, data.tobytes())
        self.frames += 1

    def close(self) -> None:
        pass


class VideoSegments:
    """``--output`` cut into files of ``seconds`` each (``--output-segment``), for a
    camera that records for days. A single file is moved into place only when the run
    ends (an mp4 is unplayable until finished), so a crash or a power cut would lose
    all of it; here each segment is written under a hidden temporary name beside its
    own and moved into place, finished and playable, once full, so a crash loses the
    segment being written at most, and the finished ones can be shipped or deleted as
    they come. Each is named after the UTC time its first frame was written, which
    sorts in time order across daylight-saving changes too: ``door.mp4`` →
    ``door-20261205-143000Z.mp4`` (a second one in the same second: ``…Z_002.mp4``).

    A segment is ``seconds`` of the video's time (frames over ``fps``), or, with a
    ``clock`` (a camera's: ``time.monotonic``), of recording by that clock: a camera's
    reported frame rate is often not the one it delivers, and ten-minute files should
    start ten minutes apart. A full segment is finished on a thread of its own, so the
    run does not wait for its encoder to drain. A segment that cannot be opened or
    finished (a full disk, a codec that refuses) is a warning, and the run goes on:
    the frames until the next segment's time are not recorded."""

    def __init__(self, path: Path, fps: float, seconds: float, clock=None) -> None:
        self.path, self.fps, self.seconds, self.clock = Path(path), float(fps), float(seconds), clock
        self.per = max(1, round(seconds * self.fps))  # frames a segment, by the video's time
        self.frames = 0  # frames written
        self.lost = 0  # frames of segments that could not be opened
        self.written = 0  # segments finished and in place
        self.failed = 0  # segments that could not be opened or finished
        self.last: Path | None = None  # the newest finished one
        self._current: tuple[contextlib.ExitStack, VideoSink, Path, int] | None = None
        self._started = 0.0  # the clock, or frames given, when the segment (or the gap) began
        self._given = 0  # frames given, written or not
        self._gap = False  # in a segment's time that could not be opened
        self._seq = 0  # segments begun
        self._last_seq = 0  # of ``last``
        self._unfinished: set[Path] = set()  # names given, not yet in place
        self._busy = 0  # segments being finished
        self._idle = threading.Condition()
        self._warn = Throttle()

    def _name(self) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%SZ", time.gmtime())
        name, k = self.path.with_name(f"{self.path.stem}-{stamp}{self.path.suffix}"), 1
        while self._taken(name):  # two in a second, a clock set back, an earlier run's
            k += 1
            name = self.path.with_name(f"{self.path.stem}-{stamp}_{k:03d}{self.path.suffix}")  # sorts after it
        return name

    def _taken(self, name: Path) -> bool:
        """Whether ``name`` is in place or still being finished. The order matters: a
        finishing thread moves its file into place *before* it drops the name from
        ``_unfinished``, so asking the set first and the disk second cannot miss it. The
        other order could: the disk asked just before the move, the set just after,
        and the new segment would later be moved over the finished one."""
        with self._idle:
            if name in self._unfinished:
                return True
        return name.exists()

    def _now(self) -> float:
        return self._given if self.clock is None else self.clock()

    def write(self, frame: np.ndarray, file: str | None = None) -> None:
        span = self.per if self.clock is None else self.seconds
        if (self._current is None and not self._gap) or self._now() - self._started >= span:
            self._next()
        self._given += 1
        if self._current is None:  # this segment's time could not be opened
            self.lost += 1
            return
        try:
            self._current[1].write(frame)
        except OSError as e:  # the encoder failed: this segment goes, the next is tried at its time
            self._fail(self._current[2], e, self._current[0])
            self._current = None
            self.lost += 1
            return
        self.frames += 1

    def _next(self) -> None:
        current, self._current = self._current, None
        if current is not None:
            with self._idle:
                self._busy += 1
            threading.Thread(target=self._finish, args=(current,), name="video-segment").start()
        self._started, self._gap = self._now(), False
        self._seq += 1
        name = None
        stack = contextlib.ExitStack()
        try:
            with stack:  # closed (the temporary file removed) unless the segment opens
                name = self._name()
                tmp = stack.enter_context(atomic_path(name))
                sink = VideoSink(tmp, self.fps, shown=name)
                stack.callback(sink.close)  # first at the end: the encoder is drained before the move
                self._current = (stack.pop_all(), sink, name, self._seq)
                with self._idle:
                    self._unfinished.add(name)
        except OSError as e:
            self._gap = True
            self._fail(name or self.path, e)

    def _fail(self, name: Path, e: Exception, stack: contextlib.ExitStack | None = None) -> None:
        if stack is not None:  # the temporary file goes
            try:
                stack.__exit__(type(e), e, e.__traceback__)
            except Exception:  # noqa: BLE001 - the error already being reported is the one that matters
                pass
        with self._idle:
            self.failed += 1
            self._unfinished.discard(name)
        if self._warn():
            log.warning("--output %s: %s; %d segments lost so far, the run goes on", name, e, self.failed)

    def _finish(self, current: tuple) -> None:
        stack, _, name, seq = current
        try:
            stack.close()
        except Exception as e:  # noqa: BLE001 - a segment that cannot be finished costs that segment
            self._fail(name, e)
        else:
            with self._idle:
                self.written += 1
                if seq > self._last_seq:  # segments may finish out of order
                    self.last, self._last_seq = name, seq
        finally:
            with self._idle:
                self._unfinished.discard(name)
                self._busy -= 1
                self._idle.notify_all()

    def close(self) -> None:
        """Finish the segment being written (what the run recorded so far is kept, also
        when it stops on an error) and wait for those still finishing. It waits on a
        condition, not with ``join``: a second Ctrl-C meanwhile then lets them finish at
        exit (the threads are not daemons) instead of leaving them as temporary files."""
        current, self._current = self._current, None
        if current is not None:
            with self._idle:
                self._busy += 1
            self._finish(current)
        self.finished()

    def finished(self) -> None:
        """Wait until the full segments are in place."""
        with self._idle:
            self._idle.wait_for(lambda: self._busy == 0)

    def summary(self) -> dict:
        with self._idle:
            last = str(self.last) if self.last else None
            return {"written": self.written, "failed": self.failed, "lost_frames": self.lost, "last": last}


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
