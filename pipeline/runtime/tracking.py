"""The runner's tracking: ``edgepipe run --track`` and its options, a ByteTrack tracker
(:mod:`pipeline.runtime.bytetrack`), line and zone counters
(:mod:`pipeline.runtime.counting`) and trails, reset when the source starts over."""

from __future__ import annotations

import json
import logging
from collections import deque
from dataclasses import dataclass

import numpy as np

from pipeline.runtime.bytetrack import ByteTracker, Tracks, match
from pipeline.runtime.counting import LineCounter, TrackMemory, ZoneCounter, _label, parse_points

__all__ = [
    "ByteTracker",
    "LineCounter",
    "TrackMemory",
    "TrackOptions",
    "Tracking",
    "Tracks",
    "ZoneCounter",
    "is_whole",
    "match",
    "parse_points",
]


log = logging.getLogger(__name__)

_FORGET_EVERY = 1024  # frames between forgetting which ended tracks were counted


def is_whole(v) -> bool:
    """An int from JSON (a bool is an int to Python, not a count or an id)."""
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class TrackOptions:
    """``edgepipe run --track`` and its options."""

    buffer: int = 30  # --track-buffer: frames a lost track is kept
    threshold: float = 0.4  # --track-threshold: the high-score threshold
    # --match-iou. This and --track-refind were chosen on four held-out sequences of
    # benchmarks/tracking.py's scene (mean IDF1 0.64 -> 0.83), not on the scored one.
    match_iou: float = 0.1
    lines: tuple[str, ...] = ()  # --count-line x1,y1,x2,y2 (repeatable)
    zones: tuple[str, ...] = ()  # --zone x1,y1,x2,y2,x3,y3,... (repeatable)
    trail: int = 30  # centre points drawn behind each track
    refind: float = 0.3  # --track-refind: a lost track's reach, box heights per frame lost

    def check(self) -> None:
        if self.buffer < 0:
            raise ValueError(f"--track-buffer must be at least 0, got {self.buffer}")
        for name, v in (("--track-threshold", self.threshold), ("--match-iou", self.match_iou)):
            if not 0.0 < v < 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {v}")
        if self.threshold >= 0.9:  # ByteTrack starts a track only from a detection 0.1 above it
            raise ValueError(
                f"--track-threshold must be below 0.9, got {self.threshold}: "
                "a new track needs a detection scoring 0.1 above it"
            )
        if not 0.0 <= self.refind < float("inf"):  # NaN fails too
            raise ValueError(f"--track-refind must be a number at least 0, got {self.refind}")


class Tracking:
    """Tracks one run's detections, counts line crossings and zone occupancy, keeps
    trails; resets the tracks (keeping the counts) when the source starts over."""

    def __init__(self, opts: TrackOptions, class_names) -> None:
        opts.check()
        self.opts, self.class_names = opts, list(class_names)
        self.lines = [LineCounter.parse(t, i) for i, t in enumerate(opts.lines)]
        self.zones = [ZoneCounter.parse(t, i) for i, t in enumerate(opts.zones)]
        for row, counter in enumerate((*self.lines, *self.zones)):
            counter.memory_row = row  # each counter's state lives in the tracks' own array
        self.tracker = ByteTracker(
            opts.threshold,
            opts.buffer,
            opts.match_iou,
            refind=opts.refind,
            memory_rows=len(self.lines) + len(self.zones),
        )
        self._history: deque = deque(maxlen=max(1, opts.trail))  # (ids, centres) of recent frames
        self._labels: list[str] = []  # class id -> label, grown on demand
        self.live = 0
        self.resets = 0
        self.seen = 0  # confirmed tracks so far (ids only grow: a counter, not a set, for 24/7 runs)
        self._last_id = 0
        self._session: int | None = None
        self._steps = 0

    def step(self, preds: dict, frame_index: int, session: int = 0) -> tuple[dict, list[dict]]:
        """Detections of one frame → the tracked objects (with ``track_ids``) and the
        counting events of this frame."""
        if self._session is not None and session != self._session:
            self.tracker.reset()
            self._history.clear()
            for c in (*self.lines, *self.zones):
                c.forget_tracks()
            self.resets += 1
        self._session = session
        t = self.tracker.update(preds["boxes"], preds["scores"], preds["classes"], frame_index)
        events = [e for c in (*self.lines, *self.zones) for e in c.update(t, self.class_names)]
        self._steps += 1
        if self._steps % _FORGET_EVERY == 0:  # the counted-once marks of ended tracks
            alive = set(self.tracker.ids.tolist())
            for c in (*self.lines, *self.zones):
                c.forget_ended(alive)
        self._history.append((t.ids, t.centres))
        self.live = len(t)
        # A track is output first the frame it is confirmed, and confirmed in the order
        # it started, so the ids newly seen are those above the last seen.
        new = t.ids[t.ids > self._last_id]
        if len(new):
            self.seen += len(new)
            self._last_id = int(new.max())
        classes = t.classes.tolist()
        if len(self._labels) < self.tracker.votes.shape[1]:  # the class ids seen so far
            self._labels = [_label(self.class_names, k) for k in range(self.tracker.votes.shape[1])]
        tracked = {
            "boxes": np.asarray(t.boxes, np.float32),  # a copy only for tracks built by hand
            "scores": t.scores.astype(np.float32),
            "classes": t.classes.astype(np.int32),
            "labels": list(map(self._labels.__getitem__, classes)),
            "count": len(t),
            "track_ids": t.ids,
        }
        return tracked, events

    def check_frame(self, height: int, width: int) -> list[str]:
        """Warn about each line or zone that lies wholly outside a ``width`` × ``height``
        frame (coordinates given for another resolution, say): it can never count."""
        shapes = [(f"--count-line {c.index}", np.stack([c.start, c.end])) for c in self.lines]
        shapes += [(f"--zone {c.index}", c.polygon) for c in self.zones]
        outside = []
        for name, pts in shapes:
            (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
            if x1 < 0 or y1 < 0 or x0 > width or y0 > height:
                outside.append(name)
        if outside:
            log.warning(
                "%s: wholly outside the %dx%d frame, so it never counts; coordinates are source-frame pixels",
                ", ".join(outside),
                width,
                height,
            )
        return outside

    @property
    def trails(self) -> dict[int, np.ndarray]:
        """Each live track's recent centres, oldest first, back to where it was last
        unseen. Built when a frame is drawn, so a headless run never pays for it."""
        if not self._history:
            return {}
        live = self._history[-1][0]
        points: dict[int, list] = {tid: [] for tid in live.tolist()}
        going = set(points)
        for ids, centres in reversed(self._history):
            at = dict(zip(ids.tolist(), range(len(ids))))
            going &= set(at)
            if not going:
                break
            for tid in going:
                points[tid].append(centres[at[tid]])
        return {tid: np.asarray(p[::-1]) for tid, p in points.items()}

    def draw(self, frame: np.ndarray, classes_by_id: dict[int, int] | None = None) -> np.ndarray:
        """Trails, counting lines and zones with their counts (BGR frame, in place)."""
        from pipeline.core.overlay import draw_polyline, palette

        colors = palette(max(1, len(self.class_names)))
        classes_by_id = classes_by_id or {}
        for tid, pts in self.trails.items():
            if len(pts) > 1:
                draw_polyline(frame, np.asarray(pts), colors[classes_by_id.get(tid, 0) % len(colors)])
        for line in self.lines:
            total_in, total_out = sum(line.counts["in"].values()), sum(line.counts["out"].values())
            label = f"line {line.index}: in {total_in} out {total_out}"
            draw_polyline(frame, np.stack([line.start, line.end]), (0, 255, 255), label=label)
        for zone in self.zones:
            label = f"zone {zone.index}: {sum(zone.inside.values())} inside, {sum(zone.entries.values())} entered"
            draw_polyline(frame, zone.polygon, (255, 0, 255), closed=True, label=label)
        return frame

    def summary(self) -> dict:
        return {
            "tracks": self.seen,
            "resets": self.resets,
            "next_track_id": self.tracker.next_id,
            # the highest id shown so far; those between it and next_track_id are tentative
            # tracks, shown later (counted then, also by replay) or never
            "last_track_id": self._last_id,
            "lines": [c.summary() for c in self.lines],
            "zones": [c.summary() for c in self.zones],
        }

    def resume(self, saved: dict, where: str) -> None:
        """Carry on from an earlier run's counts (its summary's ``tracking`` part): a
        counter restarted after a crash or a power cut keeps the day's totals, and new
        track ids start above the earlier run's, so ids stay unique in a JSONL that the
        runs append to. The lines and zones must be the same, in the same order; who is
        inside a zone now is what the camera sees, not carried on. A ValueError names
        ``where`` and what does not fit."""

        def counts(d, what: str) -> dict[str, int]:
            if not isinstance(d, dict) or not all(isinstance(k, str) and is_whole(v) and v >= 0 for k, v in d.items()):
                raise ValueError(f"{where}: {what} is not a count per label ({str(d)[:80]})")
            return dict(d)

        def points(v, what: str) -> np.ndarray:
            try:
                p = np.asarray(v, float)
            except (TypeError, ValueError, OverflowError):  # None, strings, ragged lists, 10**400
                p = np.full(1, np.nan)
            if not p.size or not np.isfinite(p).all():
                raise ValueError(f"{where}: {what} is not a list of finite coordinates ({str(v)[:80]})")
            return p

        if not isinstance(saved, dict) or not {"tracks", "lines", "zones"} <= saved.keys():
            raise ValueError(f"{where}: no tracking counts in it (a summary written with --track has them)")
        lines, zones = saved["lines"], saved["zones"]
        ours = [c.summary()["line"] for c in self.lines], [c.summary()["zone"] for c in self.zones]
        for what, got, want, key in (("--count-line", lines, ours[0], "line"), ("--zone", zones, ours[1], "zone")):
            if not isinstance(got, list) or not all(isinstance(s, dict) for s in got):
                raise ValueError(f"{where}: its {key}s are not a list of counters ({str(got)[:80]})")
            theirs = [points(s.get(key), f"{key} {k}") for k, s in enumerate(got)]
            if len(theirs) != len(want) or any(
                a.shape != np.shape(b) or not np.allclose(a, b) for a, b in zip(theirs, want)
            ):
                raise ValueError(
                    f"{where}: its {what} {[t.tolist() for t in theirs]} differ from this run's {want}: the counts "
                    "would not be of the same places (the same lines and zones, the same points in the same "
                    "order; or start a new file)"
                )
        resumed = (
            [{d: counts(s.get(d), f"line {k} {d!r}") for d in ("in", "out")} for k, s in enumerate(lines)],
            [counts(s.get("entries"), f"zone {k} 'entries'") for k, s in enumerate(zones)],
        )
        seen, next_id = saved["tracks"], saved.get("next_track_id", 1)
        # ids live in the tracker's float64 state, exact as whole numbers below 2**53
        if not all(is_whole(v) and 0 <= v < 2**52 for v in (seen, next_id)):
            raise ValueError(
                f"{where}: 'tracks' and 'next_track_id' must be whole numbers from 0 to 2**52, got {seen!r}, {next_id!r}"
            )
        last = saved.get("last_track_id", max(next_id - 1, 0))  # older summaries: every id given was shown
        if not is_whole(last) or not 0 <= last < max(next_id, 1):
            raise ValueError(f"{where}: 'last_track_id' must be a whole number below 'next_track_id', got {last!r}")
        for c, got in zip(self.lines, resumed[0]):
            c.counts = got
        for z, got in zip(self.zones, resumed[1]):
            z.entries = got
        self.seen = seen
        self.ids_above(max(next_id - 1, seen))
        self._last_id = last  # replay counts the ids above it that its lines show

    def replay(self, lines) -> tuple[int, int]:
        """Count again the events of JSONL lines (``bytes`` or ``str``) that the runner
        wrote after the summary :meth:`resume` read: a crash loses the summary's last
        seconds, not the JSONL's. Tracks first shown there (ids above the summary's
        ``last_track_id``) join ``tracks``, and later ids start above them. Returns the
        lines read and those skipped as unreadable (a line a power cut cut short)."""
        # above the last id shown: a track still tentative at the summary is new here too
        first_new, top, new = self._last_id + 1, 0, set()
        read = unreadable = 0
        for raw in lines:
            read += 1
            try:
                row = json.loads(raw)
                shown = [p["track_id"] for p in row.get("predictions") or []]
                events = list(row.get("events") or [])
            except (ValueError, TypeError, KeyError, AttributeError):
                unreadable += 1
                continue
            for tid in shown:
                if is_whole(tid):
                    top = max(top, tid)
                    if tid >= first_new:
                        new.add(tid)
            for e in events:
                if not isinstance(e, dict) or not isinstance(e.get("label"), str):
                    continue
                counters = {"line": self.lines, "zone": self.zones}.get(e.get("type"), [])
                k = e.get(e.get("type")) if counters else None
                if is_whole(k) and 0 <= k < len(counters):  # the counter's index, as written
                    counters[k].tally(e["label"], e.get("direction"))
        self.seen += len(new)
        self.ids_above(top)
        return read, unreadable

    def ids_above(self, last: int) -> None:
        """Track ids from here on start above ``last``: an earlier run's, in the files
        that the runs share."""
        self.tracker.next_id = max(self.tracker.next_id, last + 1)
        self._last_id = self.tracker.next_id - 1
