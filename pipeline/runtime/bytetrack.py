"""ByteTrack on NumPy: the multi-object tracker behind ``edgepipe run --track``.

ByteTrack (Zhang et al., 2022; ``ifzhang/ByteTrack``'s ``byte_tracker.py``) associates
detections with tracks in two stages: high-score detections first, against every
tracked and lost track (cost 1 − IoU·score), then the low-score ones against the
tracks still unmatched (cost 1 − IoU), so a briefly occluded object whose score dips
keeps its track. A constant-velocity Kalman filter on (cx, cy, aspect, height)
predicts where each track is; a lost track is kept ``track_buffer`` frames before it
is dropped. What we change: the motion model steps by the frame-index gap, so frames
the runner dropped (``--pace``, a live camera) do not break tracks; matching is greedy
by cost (as good as Hungarian here, and no SciPy in the runtime install); a track's
class is the majority of its detections' classes; and a lost track may take back, by
distance, a detection of its class that nobody took (``refind``): an object that went
behind a pillar comes out far from where its track predicts, because its visible box
shrank and slowed as it went in (on held-out sequences of benchmarks/tracking.py's
scene: mean IDF1 0.64 without, 0.83 with), but never one behind where it was lost,
which is another object (and would count a line crossing that never happened).

Each frame's step runs in C where the install built ``_bytetrack.c`` (one call, 6
times quicker at 50 objects: NumPy's per-call cost, about a microsecond, was the whole
cost), and in NumPy here otherwise. The NumPy step is the reference: the C one follows
it line by line, and tests/test_tracking.py asks both for the same tracks. It is
written for speed too: every track's state is one field-major array, the Kalman filter
runs per dimension (its covariance is four independent 2×2 blocks), one IoU matrix
serves every association, and matching takes mutual best pairs in bulk.

We wrote it rather than take ``supervision``'s ByteTrack: that one was removed from
supervision 0.31, costs 4.7 ms per frame at 50 objects against 0.18-0.25 ms here with
the counters, counts frames without gaps, and would add about 350 MB (PyAV,
matplotlib, SciPy...) to a runtime install that is LiteRT, OpenCV and NumPy
(docs/design.md).
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

TRACKED, LOST = 1, 2
_SP, _SV = 1.0 / 20, 1.0 / 160  # ByteTrack's position and velocity noise, per unit of box height
# Re-find (``ByteTracker._refind``): a lost track reaches _REFIND_SPEED × its speed at loss per
# frame lost, at least _REFIND_FLOOR and at most ``refind`` heights, and never takes a
# detection more than _REFIND_BACK heights behind its last centre along its velocity,
# where that velocity is known: faster than its own Kalman uncertainty (the standard
# deviation of its x and y velocities), which a standing object's jitter is not.
_REFIND_SPEED, _REFIND_FLOOR, _REFIND_BACK = 3.0, 0.2, 0.5


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes given coordinate-major, ``(4, n)`` and ``(4, m)`` (the
    tracker's layout; ``pipeline.tasks.detection.boxes.box_iou`` is the row-major one): x and y
    together, contiguous rows, in place where possible. This is the tracker's largest
    array work: the tracker calls it in float32, which halves it."""
    if not a.shape[1] or not b.shape[1]:
        return np.zeros((a.shape[1], b.shape[1]), a.dtype)
    wh = np.minimum(a[2:, :, None], b[2:, None, :])
    wh -= np.maximum(a[:2, :, None], b[:2, None, :])
    np.maximum(wh, 0, out=wh)
    inter = wh[0] * wh[1]
    sa, sb = a[2:] - a[:2], b[2:] - b[:2]
    union = (sa[0] * sa[1])[:, None] + sb[0] * sb[1]
    union -= inter
    np.maximum(union, 1e-9, out=union)
    inter /= union
    return inter


def _pair_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of the boxes ``a[:, k]`` and ``b[:, k]`` (coordinate-major), pair by pair."""
    iw = np.maximum(np.minimum(a[2], b[2]) - np.maximum(a[0], b[0]), 0)
    ih = np.maximum(np.minimum(a[3], b[3]) - np.maximum(a[1], b[1]), 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
    return iw * ih / np.maximum(union, 1e-9)


_NONE = np.zeros(0, int)


_C_VERSION = 2  # bt_version() of the _bytetrack.c whose bt_update arguments are declared below
MAX_CLASSES = 1 << 24  # class ids run from 0 to below it: the tracker keeps a vote column for each


def _load_native(here: Path = Path(__file__).parent):
    """``bt_update`` of ``_bytetrack.c``, built beside this file by ``pip install`` where
    a C compiler was found (setup.py; the build is optional); None where it was not, or
    with ``EDGEPIPE_TRACKER=numpy``, and the NumPy step below runs instead."""
    if os.environ.get("EDGEPIPE_TRACKER", "").lower() == "numpy":
        return None
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / f"_bytetrack{suffix}"
        if path.is_file():
            try:
                # PyDLL: the call keeps the GIL (20-50 µs), so no other thread can reset or
                # grow the tracker's arrays under it, as it could not under the NumPy step
                lib = ctypes.PyDLL(str(path))
                lib.bt_version.restype = ctypes.c_int64
                version, fn = lib.bt_version(), lib.bt_update
            except (OSError, AttributeError) as e:  # built for another machine, or half written
                log.warning("%s: not loadable (%s); tracking with NumPy, which is slower", path, e)
                return None
            if version != _C_VERSION:  # built from an older _bytetrack.c: its arguments differ
                log.warning(
                    "%s: built from another version of _bytetrack.c (%d, not %d); tracking with NumPy, which is "
                    "slower, until it is built again (pip install .)",
                    path,
                    version,
                    _C_VERSION,
                )
                return None
            i64, ptr = ctypes.c_int64, ctypes.c_void_p
            fn.restype = i64
            fn.argtypes = [ptr, i64, i64, ptr, ptr, i64, ptr, ptr, ptr, i64, i64, i64] + [ctypes.c_double] * 6
            fn.argtypes += [ptr] * 7
            return fn
    return None


_NATIVE = _load_native()


def native() -> bool:
    """Whether the tracker's frame step runs compiled (``_bytetrack.c``) here."""
    return _NATIVE is not None


def _bad_classes(classes: np.ndarray) -> str:
    return f"class ids must be whole numbers from 0 to {MAX_CLASSES - 1}, got {classes.min()} to {classes.max()}"


def set_indices(mask: np.ndarray) -> np.ndarray:
    """The indices where a 1-D ``mask`` is set: ``np.flatnonzero`` without its ravel and
    Python wrapper (0.2 against 1 µs a call, and the tracker makes a dozen a frame)."""
    return mask.nonzero()[0]


def _all(mask: np.ndarray) -> bool:
    """``mask.all()`` for a 1-D bool mask: a count in C, against ``all``'s Python
    wrapper (0.2 against 0.6 µs; a frame asks half a dozen times)."""
    return np.count_nonzero(mask) == len(mask)


def _any(mask: np.ndarray) -> bool:
    return np.count_nonzero(mask) > 0


def _trues(n: int) -> np.ndarray:
    """``np.ones(n, bool)`` without its Python wrapper (0.25 against 0.8 µs)."""
    x = np.empty(n, bool)
    x.fill(True)
    return x


def _one_minus(x: np.ndarray) -> np.ndarray:
    return np.subtract(1.0, x, out=x)


def _greedy(cost: np.ndarray, limit: float) -> tuple[list[int], list[int]]:
    """Greedy min-cost matching by a Python loop over the pairs within ``limit``, in
    order of cost (ties in row-major order, as a stable sort of the pairs gives them)."""
    m = cost.shape[1]
    flat = cost.ravel().tolist()
    used_r, used_c, rows, cols = set(), set(), [], []
    for k in sorted((k for k, v in enumerate(flat) if v <= limit), key=flat.__getitem__):  # never NaN
        a, b = divmod(k, m)
        if a not in used_r and b not in used_c:
            used_r.add(a)
            used_c.add(b)
            rows.append(a)
            cols.append(b)
    return rows, cols


_SMALL = 24  # pairs up to which the Python loop is quicker than the array operations


def match(
    cost: np.ndarray,
    limit: float,
    rows: np.ndarray | None = None,
    cols: np.ndarray | None = None,
    cost_of=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy min-cost matching: pairs in order of cost, each row and column once,
    costs above ``limit`` never. Returns the matched (rows, columns). With ``rows`` and
    ``cols`` (sorted, distinct indices), only that part of ``cost`` takes part, and
    indices into ``cost`` come back; ``cost_of`` turns that part (a copy) into costs in
    place.

    Greedy by cost takes every mutual best pair (a row's cheapest column whose cheapest
    row it is), and greedy on what is left is the same matching. So the mutual best
    pairs, most of them in a tracker's nearly one-to-one problems, are taken in a few
    array operations, and only the few contested pairs left go through the loop."""
    if rows is not None:
        if not len(rows) or not len(cols):
            return _NONE, _NONE
        # take makes a copy, 3x quicker than np.ix_. The indices are sorted and distinct,
        # so as many as the axis has are all of it (often every track): no take there.
        if len(rows) < cost.shape[0]:
            cost = cost.take(rows, 0)
            if len(cols) < cost.shape[1]:
                cost = cost.take(cols, 1)
        elif len(cols) < cost.shape[1]:
            cost = cost.take(cols, 1)
        else:
            cost = cost.copy()
    else:
        cost = cost.copy()
    if not cost.size:
        return _NONE, _NONE
    if cost_of is not None:
        cost = cost_of(cost)
    if cost.size <= _SMALL:  # the later associations: a few tracks and detections left
        r, c = _greedy(cost, limit)
        r, c = np.array(r, int), np.array(c, int)
        return (r, c) if rows is None else (rows[r], cols[c])
    every = np.arange(len(cost))
    best = cost.argmin(1)
    low = cost[every, best] <= limit  # rows with any pair within the limit
    r = set_indices((cost.argmin(0)[best] == every) & low)
    c = best[r]
    low[r] = False
    if _any(low) and len(c) < cost.shape[1]:  # rows and columns left: greedy on their few pairs
        free_c = _trues(cost.shape[1])
        free_c[c] = False
        left_r, left_c = set_indices(low), set_indices(free_c)
        more_r, more_c = _greedy(cost.take(left_r, 0).take(left_c, 1), limit)
        if more_r:
            r, c = np.concatenate([r, left_r[more_r]]), np.concatenate([c, left_c[more_c]])
    return (r, c) if rows is None else (rows[r], cols[c])


# The tracks' state is one float array with a row per field and a column per track:
# a frame's bookkeeping (select, keep, append) is one array operation however many
# fields there are, and each field is a contiguous row (NumPy on strided columns of a
# row-per-track array is about 4 times slower at these sizes, and that overhead is most
# of the cost). Tracks are selected with take/compress: ``t[:, idx]`` returns a
# non-contiguous array, on which the IoU alone costs 3 times as much. The Kalman filter on (cx, cy, aspect, height) with constant velocity
# keeps the four dimensions independent (F, Q, R and the first covariance are all per
# dimension), so its 8×8 covariance is four 2×2 blocks: position variance,
# position-velocity covariance and velocity variance per dimension, updated elementwise.
_POS, _VEL, _PP, _PV, _VV = (slice(k, k + 4) for k in range(0, 20, 4))
_ID, _STATE, _CONFIRMED, _LAST, _START, _SCORE = range(20, 26)
_FIELDS = 26
_H2 = np.array([1.0, 1.0, 0.0, 1.0])[:, None]  # dimensions whose noise scales with the box height
_FLAT = 1 - _H2
# Per dimension: variance = height² × scale + floor (the aspect ratio's noise is a constant)
_Q_POS, _Q_VEL, _R = (_H2 * _SP**2, _FLAT * 1e-4), (_H2 * _SV**2, _FLAT * 1e-10), (_H2 * _SP**2, _FLAT * 1e-2)
_P0_POS, _P0_VEL = (_H2 * (2 * _SP) ** 2, _FLAT * 1e-4), (_H2 * (10 * _SV) ** 2, _FLAT * 1e-10)
# The prediction's noise for the covariance rows (PP, PV, VV), as height² × _QH + _QF
_QH = np.stack([_Q_POS[0], np.zeros((4, 1)), _Q_VEL[0]])
_QF = np.stack([_Q_POS[1], np.zeros((4, 1)), _Q_VEL[1]])


def _transition(dt: float) -> np.ndarray:
    """The covariance rows' (PP, PV, VV) step over ``dt`` frames, per dimension."""
    return np.array([[1.0, 2 * dt, dt * dt], [0.0, 1.0, dt], [0.0, 0.0, 1.0]])


_STEP = _transition(1.0)  # the usual frame: built once, not per frame


def _noise(h: np.ndarray, var: tuple[np.ndarray, np.ndarray], scale: float = 1.0) -> np.ndarray:
    """``(4, n)`` variances for boxes of height ``h``."""
    v = np.multiply(h * h, var[0])
    v += var[1]
    if scale != 1.0:
        v *= scale
    return v


def _xyah(b: np.ndarray) -> np.ndarray:
    """Coordinate-major x1 y1 x2 y2 ``(4, n)`` → cx, cy, aspect, height rows."""
    wh = b[2:] - b[:2]
    z = np.empty_like(b)
    z[:2] = b[:2] + wh / 2
    z[2] = wh[0] / np.maximum(wh[1], 1e-6)
    z[3] = wh[1]
    return z


def _xyxy(t: np.ndarray, dtype=float) -> np.ndarray:
    """cx, cy, aspect, height rows → coordinate-major x1 y1 x2 y2 ``(4, n)``."""
    half = t[2:4] * 0.5
    half[0] *= t[3]
    out = np.empty((4, t.shape[1]), dtype)
    np.subtract(t[:2], half, out=out[:2])
    np.add(t[:2], half, out=out[2:])
    return out


@dataclass(frozen=True)
class Tracks:
    """The confirmed, currently tracked objects of one frame."""

    ids: np.ndarray  # (K,) int, stable within a run and never reused
    boxes: np.ndarray  # (K, 4) x1 y1 x2 y2: the filtered box (float32 from the tracker)
    scores: np.ndarray  # (K,) the last matched detection's score
    classes: np.ndarray  # (K,) int, the majority class of the track's detections
    # The tracker's per-track memory rows (``ByteTracker(memory_rows=...)``, a view into
    # its state: writes stay with the track, hidden or not, and go with it) and each
    # object's column in them; valid until the tracker's next update. None for tracks
    # built by hand.
    memory: np.ndarray | None = None
    slots: np.ndarray | None = None
    centres: np.ndarray | None = None  # (K, 2) box centres, for every counter and the trails

    def __post_init__(self) -> None:
        if self.centres is None:  # the tracker passes its own (its state is centre-based)
            object.__setattr__(self, "centres", (self.boxes[:, :2] + self.boxes[:, 2:]) / 2)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class ByteTracker:
    """ByteTrack with frame-gap-aware motion. One tracker is for one thread (the
    runner's main thread), with either step.

    Args:
        track_threshold: detections scoring above it are "high" (first association, and
            new tracks from those scoring 0.1 above it); above ``low_threshold`` "low".
        track_buffer: frames a lost track is kept for re-identification.
        match_iou: the first association's minimum IoU × score (ByteTrack's default
            match threshold of 0.8 on 1 − IoU·score is 0.2 here).
        refind: how far at most (in box heights per frame lost) a lost track reaches
            for a detection nobody took, of its class and height (``_refind``); 0:
            ByteTrack's IoU only.
        memory_rows: float values per track kept for the caller (the counters' last
            side of a line, inside or out of a zone), 0 for a new track; read and written
            through ``Tracks.memory`` at ``Tracks.slots``. Kept in the tracks' own array,
            they cost the counters no lookup by id and are forgotten with the track.
        native: run each frame's step compiled (``_bytetrack.c``) where it was built
            (:func:`native`); False: the NumPy step, the reference the C one is tested
            against. Both give the same tracks.
    """

    track_threshold: float = 0.5
    track_buffer: int = 30
    match_iou: float = 0.2
    low_threshold: float = 0.1
    refind: float = 0.0
    memory_rows: int = 0
    next_id: int = 1  # ids are never reused, even across reset()
    native: bool = True
    _frame: int | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.track_buffer < 0:  # removal by age relies on it (``_apply``)
            raise ValueError(f"track_buffer must be at least 0, got {self.track_buffer}")
        for name in ("track_threshold", "match_iou", "low_threshold", "refind"):  # Python floats, as C's doubles:
            setattr(self, name, float(getattr(self, name)))  # a float32 threshold moved NumPy's sums, not C's
        self._step = _NATIVE if self.native else None
        self._clear()

    def _clear(self) -> None:
        self.t = np.zeros((_FIELDS + self.memory_rows, 0))  # a column per track (the row layout above)
        self.votes = np.zeros((0, 1))  # (tracks, classes) detection counts; one class column from the start
        self._hit_fields = np.array([[TRACKED], [1.0], [0.0]])  # state, confirmed, last frame of a matched track
        self._frame = None
        if self._step is not None:  # the C step works in place: room for the tracks and a frame's new ones
            self._buf = np.zeros((_FIELDS + self.memory_rows, 64))  # self.t is a view of its first columns
            self._vbuf = np.zeros((64, 1))  # self.votes likewise
            self.t, self.votes = self._buf[:, :0], self._vbuf[:0]
            self._n, self._next = ctypes.c_int64(0), ctypes.c_double(0)  # the tracks kept, the next id
            self._in: tuple = (np.zeros(0, np.float32), np.zeros(0))  # detections; outputs (_room)
            self._out: tuple = (np.zeros(0),)
            self._room(0, 32)

    def reset(self) -> None:
        """Forget every track (a video looped, a stream reconnected); ids keep counting up."""
        self._clear()

    @property
    def ids(self) -> np.ndarray:
        """The ids of every track kept, lost ones included: those that may still be output."""
        return self.t[_ID].astype(int)

    # === Kalman filter, every track at once, per dimension ===
    @staticmethod
    def _predict(t: np.ndarray, dt: float) -> None:
        """Moves the tracks ``t`` (in place) ``dt`` frames on; process noise grows with the gap.

        Per dimension, F = [[1, dt], [0, 1]]: PP += 2·dt·PV + dt²·VV + q_pos, PV +=
        dt·VV, VV += q_vel, as one 3×3 product over the three covariance rows."""
        n = t.shape[1]
        q = np.multiply(t[3] * t[3], _QH)  # (3, 4, n), before the height moves
        q += _QF
        if dt != 1.0:
            q *= dt
        cov = t[8:20].reshape(3, 4 * n)  # PP, PV, VV: adjacent rows, a view
        q = q.reshape(3, 4 * n)
        q += (_STEP if dt == 1.0 else _transition(dt)) @ cov
        cov[...] = q
        t[_POS] += t[_VEL] if dt == 1.0 else dt * t[_VEL]

    @staticmethod
    def _correct(t: np.ndarray, z: np.ndarray) -> None:
        """Corrects the tracks ``t`` (in place) by the measurements ``z`` (cx, cy, aspect, height)."""
        s = _noise(t[3], _R)
        s += t[_PP]
        n = t.shape[1]
        cov = t[8:16].reshape(2, 4, n)  # PP and PV (views: updated in place)
        gain = cov / s  # position and velocity gains
        state = t[:8].reshape(2, 4, n)  # position and velocity
        state += gain * (z - t[_POS])
        t[_VV] -= gain[1] * t[_PV]
        np.subtract(1, gain[0], out=gain[0])
        cov *= gain[0]

    def _initiate(self, z: np.ndarray, scores: np.ndarray, confirmed: bool) -> np.ndarray:
        k = z.shape[1]
        t = np.zeros((_FIELDS + self.memory_rows, k))
        t[_POS] = z
        t[_PP] = _noise(z[3], _P0_POS)
        t[_VV] = _noise(z[3], _P0_VEL)
        t[_ID] = np.arange(self.next_id, self.next_id + k)
        t[_STATE], t[_CONFIRMED] = TRACKED, confirmed
        t[_LAST] = t[_START] = self._frame
        t[_SCORE] = scores
        self.next_id += k
        return t

    # === One frame ===
    def update(self, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, frame: int | None = None) -> Tracks:
        """Associate one frame's detections; ``frame`` is its index in the source, so a
        gap of dropped frames moves the tracks (and ages lost ones) by as many steps."""
        first = self._frame is None
        frame = (self._frame or 0) + 1 if frame is None else int(frame)
        dt = 1 if first else max(1, frame - self._frame)
        before, self._frame = self._frame, frame
        try:
            step = self._update_numpy if self._step is None else self._update_native
            return step(boxes, scores, classes, frame, dt, first)
        except Exception:  # detections it cannot take: as if this frame had not come
            self._frame = before
            raise

    def _update_numpy(self, boxes, scores, classes, frame: int, dt: int, first: bool) -> Tracks:
        # coordinate-major, contiguous; float32 (the detector's), which halves the IoU's work
        b = np.array(np.asarray(boxes).reshape(-1, 4).T, np.float32, order="C")
        scores, classes = np.asarray(scores, float).reshape(-1), np.asarray(classes, int).reshape(-1)
        # below both thresholds a detection takes part in no association; nor does a box
        # with an infinite or NaN side (its track would be NaN)
        with np.errstate(over="ignore", invalid="ignore"):  # float32 sides of 3e38 - -3e38, inf - inf
            wh = b[2:] - b[:2]
        ok = ((wh > 0) & (wh < np.inf)).all(0) & (scores > min(self.low_threshold, self.track_threshold))
        if not _all(ok):
            b, scores, classes = b.compress(ok, 1), scores[ok], classes[ok]
        if len(classes) and (classes.min() < 0 or classes.max() >= MAX_CLASSES):  # as the C step: a vote column each
            raise ValueError(_bad_classes(classes))
        if len(classes) and classes.max() >= self.votes.shape[1]:
            self.votes = np.pad(self.votes, ((0, 0), (0, classes.max() + 1 - self.votes.shape[1])))
        t = self.t
        confirmed, tracked = t[_CONFIRMED] > 0, t[_STATE] == TRACKED
        # the usual frame: every track confirmed and none lost, and the stages for new
        # and lost tracks have nothing to do
        every_confirmed, every_tracked = _all(confirmed), _all(tracked)
        if _any(confirmed):
            if not every_tracked:
                t[7, ~tracked] = 0  # a lost track stops growing
            if every_confirmed:
                self._predict(t, float(dt))
            else:
                p = t.compress(confirmed, 1)
                self._predict(p, float(dt))
                t[:, confirmed] = p
        iou = _iou(_xyxy(t, np.float32), b)  # every track × detection, once
        hit_t, hit_d, newly_lost, remove, free_d = self._associate(
            iou, b, scores, classes, confirmed, tracked, frame, every_confirmed, every_tracked
        )
        return self._apply(hit_t, hit_d, newly_lost, remove, free_d, iou, b, scores, classes, frame, first)

    def _update_native(self, boxes, scores, classes, frame: int, dt: int, first: bool) -> Tracks:
        """:meth:`update` by ``_bytetrack.c``: the same steps in one call, on the state
        in place. The arrays it reads and writes are kept from frame to frame with their
        addresses (looking one up costs 2 µs, as much as a tenth of the step), and the
        frame's detections are copied into them."""
        b, scores, classes = (
            np.asarray(boxes).reshape(-1, 4),
            np.asarray(scores).reshape(-1),
            np.asarray(classes).reshape(-1),
        )
        m = len(b)
        if len(scores) != m or len(classes) != m:
            raise ValueError(f"{m} boxes, {len(scores)} scores and {len(classes)} classes: one each per detection")
        n = self.t.shape[1]
        if n + m > self._buf.shape[1] or m > len(self._in[1]):
            self._room(n, m)
        self._in[0][:m], self._in[1][:m], self._in[2][:m] = b, scores, classes
        self._n.value, self._next.value = n, self.next_id
        while True:
            k = self._step(
                self._at[0], self._buf.shape[1], self._buf.shape[0], self._at[1], self._at[2], self._vbuf.shape[1],
                *self._at[3:6], m, frame, first, float(dt), self.track_threshold, self.match_iou, self.low_threshold,
                self.refind, self.track_buffer, *self._at[6:],
            )  # fmt: skip
            if k > -3:
                break
            self._room(n, m, classes=-2 - k)  # a class id not seen before: votes one column wider (or more)
        if k < 0:
            raise (
                MemoryError("tracking: no memory for this frame's association")
                if k == -1
                else ValueError(_bad_classes(classes))
            )
        n = self._n.value
        self.next_id = int(self._next.value)
        self.t, self.votes = self._buf[:, :n], self._vbuf[:n]
        ids, boxes_, scores_, classes_, centres = (a[:k].copy() for a in self._out[:5])
        memory = self.t[_FIELDS:] if self.memory_rows else None
        return Tracks(
            ids, boxes_, scores_, classes_, memory, self._out[5][:k].copy() if self.memory_rows else None, centres
        )

    def _room(self, n: int, m: int, classes: int = 0) -> None:
        """Room for ``n`` tracks, ``m`` detections and the tracks they may start, and
        ``classes`` vote columns; doubling, so that it grows now and then, not every frame."""
        room = max(self._buf.shape[1], 2 * (n + m) if n + m > self._buf.shape[1] else 0)
        width = max(self._vbuf.shape[1], classes)
        if room != self._buf.shape[1] or width != self._vbuf.shape[1]:
            buf, votes = np.zeros((self._buf.shape[0], room)), np.zeros((room, width))
            buf[:, :n], votes[:n, : self._vbuf.shape[1]] = self._buf[:, :n], self._vbuf[:n]
            self._buf, self._vbuf = buf, votes
            self.t, self.votes = buf[:, :n], votes[:n]
        if m > len(self._in[1]) or len(self._out[0]) < room:
            d = max(m, 2 * len(self._in[1]))
            self._in = (np.zeros((d, 4), np.float32), np.zeros(d), np.zeros(d, np.int64))
            r = self._buf.shape[1]
            self._out = (
                np.zeros(r, np.int64),
                np.zeros((r, 4), np.float32),
                np.zeros(r),
                np.zeros(r, np.int64),
                np.zeros((r, 2)),
                np.zeros(r, np.int64),
            )
        at = [a.ctypes.data for a in (self._buf, self._vbuf, *self._in, *self._out)]
        self._at = (at[0], ctypes.addressof(self._n), at[1], *at[2:5], ctypes.addressof(self._next), *at[5:])

    def _associate(self, iou, b, scores, classes, confirmed, tracked, frame: int, every_confirmed, every_tracked):
        """ByteTrack's associations, and ours: the tracks that took a detection
        (``hit_t[k]`` took ``hit_d[k]``), those newly lost, those to remove (new tracks
        that found no detection), and the detections nobody took."""
        t = self.t
        high = scores > self.track_threshold
        weighted = 1 - iou * scores
        # 1: every confirmed track against the high-score detections (cost 1 - IoU·score)
        r1, c1 = match(weighted, 1 - self.match_iou, set_indices(confirmed), set_indices(high))
        free_t, free_d = _trues(t.shape[1]), _trues(len(scores))
        free_t[r1], free_d[c1] = False, False
        # 2: tracks still tracked (not lost) against the low-score ones: an occluded object dips
        stage2 = free_t & confirmed & tracked
        r2, c2 = match(iou, 0.5, set_indices(stage2), set_indices(~high), cost_of=_one_minus)
        stage2[r2] = False  # what is left of it is newly lost
        free_d[c2] = False
        # 4 (ours): tracks lost before this frame against the high detections left, by
        # distance: an object that comes out from behind something is rarely where its
        # track predicts (its visible box shrank and slowed as it went in).
        r4 = c4 = r3 = c3 = _NONE
        if not every_tracked:
            r4, c4 = self._refind(t, b, classes, set_indices(free_t & confirmed & ~tracked), high & free_d, frame)
            free_d[c4] = False
        # 3: last frame's new tracks confirm with a high-score detection, or go
        remove = ~confirmed
        if not every_confirmed:
            r3, c3 = match(weighted, 0.7, set_indices(remove), set_indices(high & free_d))
            free_d[c3] = False
            remove[r3] = False

        return np.concatenate([r1, r2, r4, r3]), np.concatenate([c1, c2, c4, c3]), stage2, remove, free_d

    def _apply(self, hit_t, hit_d, newly_lost, remove, free_d, iou, b, scores, classes, frame: int, first: bool):
        """Correct the tracks that took a detection, lose and drop tracks, start new
        ones; the confirmed tracks of this frame."""
        t = self.t
        if len(hit_t):
            rows = t.take(hit_t, 1)
            self._correct(rows, _xyah(b.take(hit_d, 1)))
            self._hit_fields[2] = frame
            rows[_STATE : _LAST + 1] = self._hit_fields  # adjacent rows: one assignment
            rows[_SCORE] = scores[hit_d]
            t[:, hit_t] = rows
            self.votes[hit_t, classes[hit_d]] += 1  # each track once: no need for np.add.at
        t[_STATE, newly_lost] = LOST
        # Past the buffer: every track not lost was matched this frame (its last frame is
        # this one) or is a new track already in ``remove``, so the age alone tells.
        remove |= t[_LAST] < frame - self.track_buffer
        # New tracks from high detections nobody took; confirmed at once on the first
        # frame, else when a high detection matches them in the next frame.
        new = set_indices(free_d & (scores >= self.track_threshold + 0.1))
        if len(new):
            t = self.t = np.concatenate([t, self._initiate(_xyah(b.take(new, 1)), scores[new], first)], 1)
            votes = np.zeros((len(new), self.votes.shape[1]))
            votes[np.arange(len(new)), classes[new]] = 1
            self.votes = np.concatenate([self.votes, votes])
            remove = np.concatenate([remove, np.zeros(len(new), bool)])
        self._drop_duplicates(remove, iou, hit_t, hit_d, new)
        keep = ~remove
        out = keep & (t[_STATE] == TRACKED) & (t[_CONFIRMED] > 0)
        shown, votes = t.compress(out, 1), self.votes[out]
        if not _all(keep):
            self.t, self.votes = t.compress(keep, 1), self.votes[keep]
            out = out[keep]
        memory = self.t[_FIELDS:] if self.memory_rows else None
        slots = set_indices(out) if self.memory_rows else None
        return Tracks(
            shown[_ID].astype(int),
            _xyxy(shown, np.float32).T,
            shown[_SCORE],
            votes.argmax(1),
            memory,
            slots,
            shown[:2].T,  # a view of this frame's own copy
        )

    def _refind(
        self, t: np.ndarray, b: np.ndarray, classes: np.ndarray, lost: np.ndarray, free: np.ndarray, frame: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Lost tracks still within the buffer ↔ free detections of the track's class and
        a similar height whose centre lies within ``0.5 + reach × frames lost`` track
        heights of the predicted centre, nearest first. ``reach`` is ``refind`` for a track
        that was moving, less for a slow one (3 × its speed at loss in heights per frame,
        at least 0.2): a track that stood still does not reach across the frame. And a
        moving track never reaches behind: the detection may lie at most half a height
        back from its last centre along its velocity. An object coming out from behind a
        pillar comes out ahead of its prediction (its box shrank and slowed as it went
        in); a detection behind where the track was lost is another object, and taking it
        would count a line crossing that never happened. Moving means faster than the
        velocity's own standard deviation in the filter: a standing object's jitter
        gives it a small velocity of no meaning, and it may come back on any side."""
        dets = set_indices(free)
        if not self.refind or not len(lost) or not len(dets):
            return _NONE, _NONE
        gap = frame - t[_LAST].take(lost)
        lost = lost[gap <= self.track_buffer]  # past the buffer a track is gone: no reach, however long
        if not len(lost):
            return _NONE, _NONE
        tl, bd = t.take(lost, 1), b.take(dets, 1)
        h = np.maximum(tl[3], 1e-6)
        centre = (bd[:2] + bd[2:]) / 2
        gap = np.maximum(frame - tl[_LAST], 1)  # a frame index gone back: one step
        dx, dy = centre[0] - tl[0][:, None], centre[1] - tl[1][:, None]  # from the predicted centre
        dist = np.hypot(dx, dy)
        speed = np.hypot(tl[4], tl[5])  # px per frame, unchanged since the track was lost
        per_frame = np.minimum(np.maximum(_REFIND_SPEED * speed / h, _REFIND_FLOOR), self.refind)
        dist /= (h * (0.5 + per_frame * gap))[:, None]
        # The last centre is the prediction less velocity × gap (a lost track's velocity is
        # kept): the displacement from it along the velocity (px) is that from the
        # prediction plus speed × gap.
        along = (dx * tl[4][:, None] + dy * tl[5][:, None]) / np.maximum(speed, 1e-9)[:, None]
        along += (speed * gap)[:, None]
        ratio = (bd[3] - bd[1]) / h[:, None]
        same = (self.votes[lost].argmax(1)[:, None] == classes[dets]) & (ratio > 0.5) & (ratio < 2)
        vv = tl[_VV]  # speed above the x and y velocities' standard deviation (their variances' mean)
        moving = 2 * speed * speed > vv[0] + vv[1]
        same &= (along >= -_REFIND_BACK * h[:, None]) | ~moving[:, None]
        r, c = match(np.where(same, dist, np.inf), 1.0)
        return lost[r], dets[c]

    def _drop_duplicates(
        self, remove: np.ndarray, iou: np.ndarray, hit_t: np.ndarray, hit_d: np.ndarray, new: np.ndarray
    ) -> None:
        """A tracked and a lost track on the same object (IoU > 0.85): the younger goes.

        The tracked tracks are those that took a detection this frame (``hit_t[k]``
        took ``hit_d[k]``) and the new ones (from the detections ``new``, in the columns
        after the tracks of ``iou``). They sit between their prediction and it,
        so only the pairs whose detection overlaps the lost track at all (``iou``: lost
        tracks' boxes do not move after the prediction) are compared: a few pairs, not
        every tracked × lost one."""
        t = self.t
        n = len(iou)
        lost = set_indices((t[_STATE, :n] == LOST) & ~remove[:n])
        if not len(lost) or not (len(hit_d) or len(new)):
            return
        tracked, dets = np.concatenate([hit_t, n + np.arange(len(new))]), np.concatenate([hit_d, new])
        a, b = (iou.take(lost, 0).take(dets, 1) > 0).nonzero()
        if not len(a):
            return
        p, q = tracked[b], lost[a]
        boxes = _xyxy(t.take(np.concatenate([p, q]), 1))  # both sides' boxes in one conversion
        same = _pair_iou(boxes[:, : len(p)], boxes[:, len(p) :]) > 0.85
        p, q = p[same], q[same]
        age = t[_LAST] - t[_START]
        remove[np.where(age[p] > age[q], q, p)] = True
