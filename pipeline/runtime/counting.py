"""Line and zone counting of tracked objects: crossings once per track and direction,
occupancy per class and entries; a track's last side or inside-ness is kept while it
is hidden (in the tracker's own per-track memory under ``edgepipe run``, by id in a
``TrackMemory`` for tracks built by hand), so an object that crosses while occluded
still counts."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.runtime.bytetrack import Tracks, set_indices


def parse_points(text: str, what: str, n: int | None = None) -> np.ndarray:
    """``"x1,y1,x2,y2,..."`` → ``(k, 2)`` float points; a ValueError naming ``what``."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"{what} {text!r}: expected comma-separated numbers, e.g. 320,0,320,480") from None
    if len(values) % 2 or (n is not None and len(values) != 2 * n) or len(values) < 2 * (n or 3):
        want = f"{n} points ({2 * n} numbers)" if n else "at least 3 points"
        raise ValueError(f"{what} {text!r}: expected {want} as x,y pairs")
    points = np.asarray(values, float).reshape(-1, 2)
    if not np.isfinite(points).all():  # "nan" and "inf" parse as floats, and would never count
        raise ValueError(f"{what} {text!r}: every coordinate must be a finite number (pixels of the source frame)")
    return points


class TrackMemory:
    """A small value per track (a side of a line, in or out of a zone) kept across
    frames, also while a track is hidden: ids kept sorted with their values, so a
    frame's tracks are looked up and stored in a few array operations, not a Python
    loop per track. Tracks unseen for ``forget_after`` updates are forgotten (a 24/7
    run sees millions of ids)."""

    def __init__(self, forget_after: int = 10_000) -> None:
        self.forget_after = forget_after
        self.clear()

    def clear(self) -> None:
        self.m = np.zeros((3, 0), int)  # rows: id (sorted), value, update last stored
        self.updates = 0
        self.forgot = False

    def exchange(self, ids: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Stores ``values`` for the distinct ``ids`` where they are not 0 (0 keeps what
        was stored); returns what was stored before, 0 for ids never stored."""
        self.updates += 1
        self.forgot = self.updates % 256 == 0  # this update forgets the tracks unseen too long
        if self.forgot:
            self.m = self.m.compress(self.m[2] > self.updates - self.forget_after, 1)
        m, n = self.m, self.m.shape[1]
        old = np.zeros(len(ids), int)
        if n:
            pos = np.searchsorted(m[0], ids)
            pos[pos == n] = 0
            known = m[0].take(pos) == ids
            if known.all():  # the usual frame: every track seen before
                old = m[1].take(pos)
                m[1, pos] = np.where(values != 0, values, old)
                m[2, pos] = self.updates
                return old
            at = pos[known]
            old[known] = m[1].take(at)
            m[1, at] = np.where(values[known] != 0, values[known], old[known])
            m[2, at] = self.updates
            ids, values = ids[~known], values[~known]
        keep = values != 0
        if not keep.all():
            ids, values = ids[keep], values[keep]
        if len(ids):
            new = np.stack([ids, values, np.full(len(ids), self.updates)])
            m = np.concatenate([m, new], 1)
            # new tracks have the highest ids so far: appended, the ids stay sorted
            if (np.diff(m[0, max(n - 1, 0) :]) < 0).any():
                m = m.take(np.argsort(m[0], kind="stable"), 1)
            self.m = m
        return old


def _exchange(
    tracks: Tracks, row: int | None, by_id: TrackMemory, values: np.ndarray, zeros: bool = True
) -> tuple[np.ndarray, set[int] | None]:
    """:meth:`TrackMemory.exchange` for this frame's tracks: in the tracker's memory
    ``row`` when the tracks carry it (two array operations, no lookup by id), else in
    ``by_id`` (tracks built by hand). ``zeros=False``: the caller has none in ``values``.

    Also returns, when ``by_id`` has just forgotten its long-unseen tracks, the ids it
    still knows: the caller's counted-once marks of the others can go too (with the
    tracker's memory, ``Tracking`` drops them by the tracker's ids instead); else None."""
    if row is None or tracks.memory is None:
        old = by_id.exchange(tracks.ids, values)
        return old, set(by_id.m[0].tolist()) if by_id.forgot else None
    memory = tracks.memory[row]
    old = memory.take(tracks.slots)
    memory[tracks.slots] = np.where(values != 0, values, old) if zeros else values
    return old, None


def _label(class_names, k: int) -> str:
    return class_names[k] if k < len(class_names) else str(k)


@dataclass
class LineCounter:
    """Counts tracks whose box centre crosses a line segment, once per track and direction.

    "in" is crossing towards the left-hand side of the line seen from its first point to
    its second (in image coordinates, y down: for a line drawn left to right, moving up);
    "out" the other way. A centre that touches the line and goes back is not a crossing,
    and a crossing must pass between the segment's two ends.
    """

    start: np.ndarray
    end: np.ndarray
    index: int = 0
    counts: dict = field(default_factory=lambda: {"in": {}, "out": {}})
    _side: TrackMemory = field(default_factory=TrackMemory, repr=False)  # last side: +1 left, -1 right
    _done: set = field(default_factory=set)  # (track id, direction) already counted
    memory_row: int | None = None  # this counter's row of the tracker's memory (Tracking sets it)

    @classmethod
    def parse(cls, text: str, index: int = 0) -> LineCounter:
        p = parse_points(text, "--count-line", 2)
        if np.allclose(p[0], p[1]):
            raise ValueError(f"--count-line {text!r}: the two points are the same")
        return cls(p[0], p[1], index)

    def __post_init__(self) -> None:
        d = self.end - self.start
        # column 0: position along the segment (0 to 1 between its ends); column 1: minus
        # the cross product (image y points down: a negative cross product is the left side)
        self._frame = np.array([[d[0] / (d @ d), d[1]], [d[1] / (d @ d), -d[0]]])

    def update(self, tracks: Tracks, class_names) -> list[dict]:
        """Count this frame's crossings; the crossing events."""
        events = []
        if not len(tracks):
            return events
        along_side = (tracks.centres - self.start) @ self._frame
        sides = np.sign(along_side[:, 1])  # +1 left, -1 right, 0 on the line
        # a side of 0 is on the line: wait for a side; an unknown before (0): no crossing.
        # Changed sides are rare: only they are checked against the segment's ends.
        old, known = _exchange(tracks, self.memory_row, self._side, sides)
        if known is not None:
            self.forget_ended(known)
        changed = set_indices(sides * old < 0)
        for k in changed.tolist():
            if not 0.0 <= along_side[k, 0] <= 1.0:
                continue
            tid, direction = int(tracks.ids[k]), "in" if sides[k] > 0 else "out"
            if (tid, direction) in self._done:
                continue
            self._done.add((tid, direction))
            label = _label(class_names, int(tracks.classes[k]))
            self.tally(label, direction)
            events.append({"type": "line", "line": self.index, "track_id": tid, "label": label, "direction": direction})
        return events

    def tally(self, label: str, direction: str) -> None:
        """One crossing of ``label`` in ``direction`` ("in" or "out"; anything else is
        not one): from this run's tracks, or from an earlier run's JSONL events
        (:meth:`Tracking.replay`)."""
        if direction in self.counts:
            self.counts[direction][label] = self.counts[direction].get(label, 0) + 1

    def forget_tracks(self) -> None:
        """Tracks were reset (a loop, a reconnect): sides are forgotten, counts kept. Ids
        are never reused, so which tracks were counted can go too."""
        self._side.clear()
        self._done.clear()

    def forget_ended(self, alive: set[int]) -> None:
        """Only the tracks in ``alive`` (the tracker's, lost ones included) can still
        cross: the marks of the others go, so a run of weeks keeps a few, not millions."""
        self._done = {k for k in self._done if k[0] in alive}

    def summary(self) -> dict:
        return {"line": [*self.start.tolist(), *self.end.tolist()], **self.counts}


@dataclass
class ZoneCounter:
    """Occupancy of a polygon: tracks whose box centre is inside now, per class, and
    entries (a track seen outside, then inside; counted once per track)."""

    polygon: np.ndarray
    index: int = 0
    entries: dict = field(default_factory=dict)
    _was_inside: TrackMemory = field(default_factory=TrackMemory, repr=False)  # +1 inside, -1 outside
    _entered: set = field(default_factory=set)
    memory_row: int | None = None  # this counter's row of the tracker's memory (Tracking sets it)

    @classmethod
    def parse(cls, text: str, index: int = 0) -> ZoneCounter:
        p = parse_points(text, "--zone")
        d = p - p[0]
        # All on one line (or one point) when no two of them span a parallelogram: every
        # cross product, pairwise, against the polygon's size (rounding grows with it).
        # Not the signed area, which is 0 for a bow tie too.
        if np.abs(d[:, :1] * d[:, 1] - d[:, 1:] * d[:, 0]).max() <= 1e-12 * max(1.0, np.abs(d).max()) ** 2:
            raise ValueError(f"--zone {text!r}: the points enclose no area (repeated or on one line)")
        return cls(p, index)

    def __post_init__(self) -> None:
        a, b = self.polygon, np.roll(self.polygon, -1, axis=0)
        dy = b[:, 1] - a[:, 1]
        # per edge: its ends' y, and x where it meets a horizontal line: x0 + y * slope
        slope = (b[:, 0] - a[:, 0]) / np.where(dy == 0, 1e-9, dy)
        self._edges = (a[:, 1], b[:, 1], a[:, 0] - a[:, 1] * slope, slope)
        # A convex polygon (most zones: a rectangle, a quadrilateral on the floor) is the
        # points on the inner side of every edge: one product and a compare for all of
        # them, where the ray test takes seven array operations.
        edge = b - a
        after = np.roll(edge, -1, axis=0)
        turns = edge[:, 0] * after[:, 1] - edge[:, 1] * after[:, 0]  # at each vertex
        sign = 1.0 if turns.sum() > 0 else -1.0  # the inside is on the left of every edge, or the right
        # convex: every turn the same way, once round in all (a star turns the same way twice round)
        once = abs(np.arctan2(turns, (edge * after).sum(1)).sum()) < 3 * np.pi
        self._halfplanes = None
        if (turns * sign > 0).all() and once:
            normal = sign * edge @ np.array([[0.0, 1.0], [-1.0, 0.0]])  # (-dy, dx) or its opposite: inwards
            offset = (normal * a).sum(1)
            # On an edge, the ray test counts a point inside when the edge faces right or
            # down into the zone (a left or top edge), outside on the others: ">=" there,
            # ">" elsewhere, which is ">=" against the next float up.
            closed = (normal[:, 0] > 0) | ((normal[:, 0] == 0) & (normal[:, 1] > 0))
            offset = np.where(closed, offset, np.nextafter(offset, np.inf))
            # edge-major (k, 2) and (k, 1): the reduction runs across the k rows, a row at a time
            self._halfplanes = (normal, offset[:, None])
        self._now: tuple = (np.zeros(0, int), np.zeros(0, bool), [])  # this frame's classes, inside, class names

    def _contains(self, pts: np.ndarray) -> np.ndarray:
        """Even-odd ray casting, vectorised over points and edges: a point is inside when
        a ray to its right crosses an odd number of edges (for a convex polygon: inside
        every edge's half-plane)."""
        if self._halfplanes is not None:
            normals, offsets = self._halfplanes
            return np.logical_and.reduce(normals @ pts.T >= offsets, axis=0)
        ya, yb, x0, slope = self._edges
        y = pts[:, 1:]
        crosses = (ya > y) != (yb > y)
        crosses &= pts[:, :1] < x0 + y * slope
        return np.logical_xor.reduce(crosses, axis=1)

    @property
    def inside(self) -> dict[str, int]:
        """This frame's tracks inside, per label (built when read: drawn frames and the
        summary, not every frame of a headless run)."""
        classes, now, class_names = self._now
        inside: dict[str, int] = {}
        for k, n in enumerate(np.bincount(classes[now]).tolist()):  # classes may share a label: add them up
            if n:
                label = _label(class_names, k)
                inside[label] = inside.get(label, 0) + n
        return inside

    def update(self, tracks: Tracks, class_names) -> list[dict]:
        events = []
        if not len(tracks):
            self._now = (np.zeros(0, int), np.zeros(0, bool), class_names)
            return events
        now = self._contains(tracks.centres)
        self._now = (tracks.classes, now, class_names)
        was, known = _exchange(tracks, self.memory_row, self._was_inside, np.where(now, 1.0, -1.0), zeros=False)
        if known is not None:
            self.forget_ended(known)
        entered = set_indices(now & (was < 0))
        for k in entered.tolist():
            tid = int(tracks.ids[k])
            if tid in self._entered:
                continue
            self._entered.add(tid)
            label = _label(class_names, int(tracks.classes[k]))
            self.tally(label, "in")
            events.append({"type": "zone", "zone": self.index, "track_id": tid, "label": label, "direction": "in"})
        return events

    def tally(self, label: str, direction: str) -> None:
        """One entry of ``label`` (``direction`` "in"; a zone counts nothing else), as
        :meth:`LineCounter.tally`."""
        if direction == "in":
            self.entries[label] = self.entries.get(label, 0) + 1

    def forget_tracks(self) -> None:
        self._was_inside.clear()
        self._entered.clear()

    def forget_ended(self, alive: set[int]) -> None:
        self._entered &= alive

    def summary(self) -> dict:
        return {"zone": self.polygon.tolist(), "inside": dict(self.inside), "entries": dict(self.entries)}
