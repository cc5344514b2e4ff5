"""Room layouts: a rectangular or L-shaped footprint, walls cut by doors and windows, and
furniture placed against walls, around tables and in the open without overlaps.

The layout is in room coordinates (floor at z = 0, footprint in x, y >= 0, walls along the
axes). Each `Part` of the returned `Room` is one instance (a wall, the floor, a chair, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pptkit.data.synth import furniture as fb
from pptkit.data.synth.furniture import Furniture, Part
from pptkit.data.synth.primitives import PatchSet
from pptkit.data.synth.styles import StyleTraits

# Footprint size ranges (metres) per room type: (width range, depth range, may be L-shaped).
ROOM_SIZES: dict[str, tuple[tuple[float, float], tuple[float, float], bool]] = {
    "bedroom": ((3.5, 5.5), (3.2, 5.0), True),
    "living_room": ((4.5, 8.0), (4.0, 7.0), True),
    "office": ((3.5, 6.5), (3.0, 5.5), True),
    "bathroom": ((3.0, 4.2), (3.0, 3.8), False),
    "kitchen": ((3.0, 5.5), (3.0, 5.0), True),
    "study": ((3.0, 4.5), (3.0, 4.5), False),
    "conferenceRoom": ((6.0, 9.0), (4.5, 7.0), False),
    "lounge": ((5.0, 9.0), (4.5, 8.0), True),
    "copyRoom": ((3.0, 5.0), (3.0, 4.5), False),
    "storage": ((3.0, 4.5), (3.0, 4.5), False),
    "WC": ((3.0, 4.0), (3.0, 3.6), False),
    "hallway": ((6.5, 9.0), (3.0, 3.4), True),
}

# What goes in each room type: (builder, placement, min count, max count); placement is
# "wall" (back against a wall), "free" (anywhere) or "group" (a table with chairs around it).
ROOM_PROGRAMS: dict[str, tuple[tuple[str, str, int, int], ...]] = {
    "bedroom": (("bed", "wall", 1, 1), ("nightstand", "wall", 0, 2), ("dresser", "wall", 0, 1),
                ("desk", "wall", 0, 1), ("cabinet", "wall", 0, 1), ("bookshelf", "wall", 0, 1),
                ("armchair", "free", 0, 1), ("lamp", "free", 0, 1), ("trash_can", "free", 0, 1)),
    "living_room": (("sofa", "wall", 1, 2), ("armchair", "free", 0, 2), ("coffee_table", "free", 1, 1),
                    ("cabinet", "wall", 0, 2), ("bookshelf", "wall", 0, 2), ("table", "group", 0, 1),
                    ("lamp", "free", 0, 1)),
    "office": (("desk", "wall", 1, 3), ("bookshelf", "wall", 1, 2), ("cabinet", "wall", 0, 2),
               ("table", "group", 0, 1), ("trash_can", "free", 0, 2), ("armchair", "free", 0, 1)),
    "study": (("desk", "wall", 1, 1), ("bookshelf", "wall", 1, 2), ("cabinet", "wall", 0, 1),
              ("armchair", "free", 0, 1), ("lamp", "free", 0, 1)),
    "bathroom": (("toilet", "wall", 1, 1), ("sink", "wall", 1, 2), ("bathtub", "wall", 0, 1),
                 ("cabinet", "wall", 0, 1), ("trash_can", "free", 0, 1)),
    "kitchen": (("kitchen_run", "wall", 1, 2), ("refrigerator", "wall", 1, 1), ("table", "group", 0, 1),
                ("cabinet", "wall", 0, 1), ("trash_can", "free", 0, 1)),
    "conferenceRoom": (("table", "group", 1, 1), ("bookshelf", "wall", 0, 1), ("cabinet", "wall", 0, 1),
                       ("sofa", "wall", 0, 1)),
    "lounge": (("sofa", "wall", 1, 2), ("armchair", "free", 0, 2), ("coffee_table", "free", 1, 1),
               ("table", "group", 0, 2), ("bookshelf", "wall", 0, 1), ("refrigerator", "wall", 0, 1)),
    "copyRoom": (("cabinet", "wall", 2, 3), ("table", "wall", 1, 2), ("bookshelf", "wall", 0, 1),
                 ("office_chair", "free", 1, 2)),
    "storage": (("bookshelf", "wall", 2, 4), ("cabinet", "wall", 1, 3), ("table", "wall", 0, 1),
                ("chair", "free", 1, 2)),
    "WC": (("toilet", "wall", 1, 2), ("sink", "wall", 1, 2), ("trash_can", "free", 0, 1)),
    "hallway": (("cabinet", "wall", 0, 2), ("chair", "wall", 0, 2), ("trash_can", "free", 0, 1)),
}

# Flat things on walls per room type: (kind, min, max).
WALL_ITEMS: dict[str, tuple[tuple[str, int, int], ...]] = {
    "bedroom": (("picture", 1, 3),), "living_room": (("picture", 1, 3), ("tv", 0, 1)),
    "office": (("picture", 0, 2), ("board", 0, 1)), "study": (("picture", 0, 2),),
    "bathroom": (("mirror", 1, 1),), "kitchen": (("picture", 0, 1),),
    "conferenceRoom": (("board", 1, 2), ("picture", 0, 1)), "lounge": (("picture", 1, 3),),
    "copyRoom": (("board", 0, 1),), "storage": (), "WC": (("mirror", 1, 1),),
    "hallway": (("board", 0, 2), ("picture", 0, 2)),
}

MAX_TRIES = 30


@dataclass
class Wall:
    """One straight wall: start (x, y), unit direction, length, inward normal, and what is
    already on it as (along_from, along_to, z_from, z_to) intervals."""

    start: np.ndarray
    direction: np.ndarray
    length: float
    normal: np.ndarray
    busy: list[tuple[float, float, float, float]] = field(default_factory=list)
    openings: list[tuple[float, float, float, float]] = field(default_factory=list)

    def point(self, along: float) -> np.ndarray:
        return self.start + self.direction * along

    def free(self, a: float, b: float, z0: float, z1: float, margin: float = 0.05) -> bool:
        if a < margin or b > self.length - margin:
            return False
        return all(b + margin <= a2 or a - margin >= b2 or z1 <= z2 or z0 >= z3
                   for a2, b2, z2, z3 in self.busy)


@dataclass
class Room:
    """A laid-out room; `parts` are the instances (layout first, then furniture)."""

    room_type: str
    height: float
    rects: list[tuple[float, float, float, float]]  # floor as (x0, y0, x1, y1) rectangles
    walls: list[Wall]
    parts: list[Part] = field(default_factory=list)
    footprints: list[tuple[float, float, float, float]] = field(default_factory=list)
    tops: list[tuple[tuple[float, float, float, float], float]] = field(default_factory=list)


def facing_yaw(direction) -> float:
    """Yaw that turns a builder's front (local -y) to face `direction` (x, y)."""
    return float(np.arctan2(direction[0], -direction[1]))


def _footprint_box(center, yaw: float, w: float, d: float) -> tuple[float, float, float, float]:
    c, s = abs(np.cos(yaw)), abs(np.sin(yaw))
    hw, hd = (w * c + d * s) / 2, (w * s + d * c) / 2
    return (center[0] - hw, center[1] - hd, center[0] + hw, center[1] + hd)


def _overlaps(a, b, margin: float = 0.0) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1])


def footprint_of(rng: np.random.Generator, room_type: str, l_prob: float = 0.35):
    """Floor rectangles and the CCW outline of a rectangular or L-shaped room."""
    (w0, w1), (d0, d1), may_l = ROOM_SIZES[room_type]
    w, d = rng.uniform(w0, w1), rng.uniform(d0, d1)
    if may_l and rng.random() < l_prob:
        nw, nd = w * rng.uniform(0.3, 0.5), d * rng.uniform(0.3, 0.5)
        outline = [(0, 0), (w, 0), (w, d - nd), (w - nw, d - nd), (w - nw, d), (0, d)]
        rects = [(0.0, 0.0, w, d - nd), (0.0, d - nd, w - nw, d)]
    else:
        outline = [(0, 0), (w, 0), (w, d), (0, d)]
        rects = [(0.0, 0.0, w, d)]
    return rects, np.asarray(outline, dtype=np.float64)


class Layout:
    """Builds one room: shell, openings, wall items and furniture, for one style."""

    def __init__(self, rng: np.random.Generator, traits: StyleTraits, room_type: str):
        self.rng = rng
        self.traits = traits
        rects, outline = footprint_of(rng, room_type)
        walls = []
        for p, q in zip(outline, np.roll(outline, -1, axis=0)):
            length = float(np.linalg.norm(q - p))
            t = (q - p) / length
            walls.append(Wall(p, t, length, np.array([-t[1], t[0]])))
        self.room = Room(room_type, float(rng.uniform(2.5, 3.2)), rects, walls)

    # ---- geometry helpers -------------------------------------------------------------
    def inside(self, box) -> bool:
        corners = [(box[0], box[1]), (box[2], box[1]), (box[0], box[3]), (box[2], box[3])]
        return all(any(r[0] - 1e-6 <= x <= r[2] + 1e-6 and r[1] - 1e-6 <= y <= r[3] + 1e-6
                       for r in self.room.rects) for x, y in corners)

    def clear(self, box, margin: float = 0.05) -> bool:
        return self.inside(box) and not any(_overlaps(box, f, margin) for f in self.room.footprints)

    def add(self, parts: list[Part], yaw: float, offset) -> None:
        self.room.parts.extend(p.transformed(yaw, offset) for p in parts)

    # ---- shell -------------------------------------------------------------------------
    def openings(self) -> None:
        """Doors and windows: cut into walls, with reveals, frames, glass and door leaves."""
        rng, room = self.rng, self.room
        n_doors = int(rng.integers(2, 4)) if room.room_type == "hallway" else int(rng.integers(1, 3))
        no_windows = room.room_type in ("WC", "storage", "hallway")
        n_windows = 0 if no_windows else int(rng.integers(1, 4))
        for kind, count in (("door", n_doors), ("window", n_windows)):
            for _ in range(count):
                for _ in range(MAX_TRIES):
                    wall = room.walls[int(rng.integers(len(room.walls)))]
                    if kind == "door":
                        w, z0, z1 = rng.uniform(0.8, 1.0), 0.0, rng.uniform(2.0, 2.15)
                    else:
                        w, z0 = rng.uniform(0.8, 2.2), rng.uniform(0.75, 1.0)
                        z1 = min(room.height - 0.2, z0 + rng.uniform(1.1, 1.5))
                    a = rng.uniform(0.1, max(0.11, wall.length - w - 0.1))
                    if wall.free(a, a + w, 0.0, room.height, margin=0.3):
                        self._opening(wall, kind, a, a + w, z0, z1)
                        break

    def _opening(self, wall: Wall, kind: str, a: float, b: float, z0: float, z1: float) -> None:
        rng, room = self.rng, self.room
        w, h, depth = b - a, z1 - z0, 0.15
        wall.openings.append((a, b, z0, z1))
        wall.busy.append((a, b, max(0.0, z0 - 0.05), room.height))
        part = Part(kind)
        reveal = PatchSet()
        reveal.rect((-w / 2, 0, z0), (0, depth, 0), (0, 0, h))
        reveal.rect((w / 2, 0, z0), (0, 0, h), (0, depth, 0))
        reveal.rect((-w / 2, 0, z1), (0, depth, 0), (w, 0, 0))
        if kind == "window":
            reveal.rect((-w / 2, 0, z0), (w, 0, 0), (0, depth, 0))
        # The frame (casing) and the door leaf or glass, set back into the opening.
        f = 0.05
        part.box((-w / 2 - f, -0.015, z0), (-w / 2, 0.0, z1 + f), hide=("+y", "-z"))
        part.box((w / 2, -0.015, z0), (w / 2 + f, 0.0, z1 + f), hide=("+y", "-z"))
        part.box((-w / 2, -0.015, z1), (w / 2, 0.0, z1 + f), hide=("+y",))
        inset = 0.05 if kind == "door" else 0.09
        part.visible.rect((-w / 2, inset, z0), (w, 0, 0), (0, 0, h))
        if kind == "door":
            part.visible.cylinder((w / 2 - 0.08, inset, 1.0), (0, -1, 0), 0.06, 0.02)
            # Keep the swing area in front of the door free.
            center = wall.point((a + b) / 2) + wall.normal * 0.45
            room.footprints.append(_footprint_box(center, facing_yaw(wall.normal), w, 0.9))
        else:
            part.box((-w / 2 - 0.05, -0.06, z0 - 0.03), (w / 2 + 0.05, 0.0, z0), hide=("+y",))
            part.visible.rect((-0.02, inset - 0.01, z0), (0.04, 0, 0), (0, 0, h))  # mullion
            if self.traits.name != "s3dis" and rng.random() < 0.6:
                self._curtains(wall, a, b, z1)
            if rng.random() < 0.4 and z0 > 0.8:
                rw = min(w, 1.2)
                self._wall_part(wall, (a + b) / 2, [fb.radiator(rng, rw)], 0.0, 0.75, rw / 2)
        yaw = facing_yaw(wall.normal)
        origin = wall.point((a + b) / 2)
        self.add([part], yaw, (origin[0], origin[1], 0.0))
        walls_part = Part("wall", reveal)
        room.parts.append(walls_part.transformed(yaw, (origin[0], origin[1], 0.0)))

    def _curtains(self, wall: Wall, a: float, b: float, z1: float) -> None:
        top = min(self.room.height - 0.05, z1 + 0.15)
        for side in (-1, 1):
            cw = self.rng.uniform(0.3, 0.6)
            center = a - cw / 2 if side < 0 else b + cw / 2
            lo, hi = center - cw / 2, center + cw / 2
            if wall.free(lo, hi, 0.0, top, margin=0.0):
                part = fb.curtain(self.rng, cw, top - 0.02, -0.12, 0.02)
                self._wall_part(wall, center, [part], 0.0, top, cw / 2)

    def _wall_part(self, wall: Wall, along: float, parts: list[Part], z0: float, z1: float,
                   half_width: float | None = None) -> None:
        if half_width is not None:
            wall.busy.append((along - half_width, along + half_width, z0, z1))
        p = wall.point(along)
        self.add(parts, facing_yaw(wall.normal), (p[0], p[1], 0.0))

    def shell(self) -> None:
        """Floor, ceiling and the wall pieces around the openings (one instance per wall)."""
        room = self.room
        floor, ceiling = Part("floor"), Part("ceiling")
        for x0, y0, x1, y1 in room.rects:
            floor.visible.rect((x0, y0, 0.0), (x1 - x0, 0, 0), (0, y1 - y0, 0))
            ceiling.visible.rect((x0, y0, room.height), (0, y1 - y0, 0), (x1 - x0, 0, 0))
        room.parts[:0] = [floor, ceiling]
        for wall in room.walls:
            part = Part("wall")
            up = np.array([0.0, 0.0, 1.0])
            along = np.array([wall.direction[0], wall.direction[1], 0.0])
            start = np.array([wall.start[0], wall.start[1], 0.0])
            cursor = 0.0
            for a, b, z0, z1 in sorted(wall.openings):
                part.visible.rect(start + along * cursor, up * room.height, along * (a - cursor))
                if z0 > 0:
                    part.visible.rect(start + along * a, up * z0, along * (b - a))
                part.visible.rect(start + along * a + up * z1, up * (room.height - z1), along * (b - a))
                cursor = b
            part.visible.rect(start + along * cursor, up * room.height, along * (wall.length - cursor))
            room.parts.insert(2, part)

    def beams_and_columns(self) -> None:
        """S3DIS-style beams across the ceiling and columns standing against walls."""
        rng, room = self.rng, self.room
        x0, y0, x1, y1 = room.rects[0]
        for _ in range(int(rng.integers(0, 3))):
            w, dz = rng.uniform(0.25, 0.5), rng.uniform(0.25, 0.5)
            x = rng.uniform(x0 + 0.8, x1 - 0.8)
            beam = Part("beam").box((x - w / 2, y0, room.height - dz), (x + w / 2, y1, room.height),
                                    hide=("+z", "-y", "+y"))
            room.parts.append(beam)
        for _ in range(int(rng.integers(0, 3))):
            wall = room.walls[int(rng.integers(len(room.walls)))]
            w, d = rng.uniform(0.35, 0.6), rng.uniform(0.2, 0.4)
            a = rng.uniform(0.1, max(0.11, wall.length - w - 0.1))
            if not wall.free(a, a + w, 0.0, room.height, margin=0.1):
                continue
            wall.openings.append((a, a + w, 0.0, room.height))
            wall.busy.append((a, a + w, 0.0, room.height))
            column = Part("column").box((-w / 2, -d, 0.0), (w / 2, 0.0, room.height), hide=("-z", "+z", "+y"))
            center = wall.point(a + w / 2)
            self._wall_part(wall, a + w / 2, [column], 0.0, room.height)
            room.footprints.append(_footprint_box(center + wall.normal * d / 2, facing_yaw(wall.normal), w, d))

    # ---- furniture ---------------------------------------------------------------------
    def against_wall(self, item: Furniture, gap: float = 0.02) -> tuple[np.ndarray, np.ndarray] | None:
        """Place `item` with its back to a free stretch of wall; its centre and the wall's
        inward normal, or None when no spot was found."""
        rng, room = self.rng, self.room
        for _ in range(MAX_TRIES):
            wall = room.walls[int(rng.integers(len(room.walls)))]
            if wall.length < item.width + 0.2:
                continue
            a = rng.uniform(0.05, wall.length - item.width - 0.05)
            if not wall.free(a, a + item.width, 0.0, item.height, margin=0.02):
                continue
            center = wall.point(a + item.width / 2) + wall.normal * (item.depth / 2 + gap)
            yaw = facing_yaw(wall.normal)
            box = _footprint_box(center, yaw, item.width, item.depth)
            if not self.clear(box, margin=0.02):
                continue
            wall.busy.append((a, a + item.width, 0.0, item.height))
            self._place(item, yaw, center, box)
            return center, wall.normal
        return None

    def free_standing(self, item: Furniture, margin: float = 0.3) -> bool:
        rng, room = self.rng, self.room
        x0, y0, x1, y1 = room.rects[int(rng.integers(len(room.rects)))]
        for _ in range(MAX_TRIES):
            yaw = float(rng.integers(4)) * np.pi / 2
            center = np.array([rng.uniform(x0, x1), rng.uniform(y0, y1)])
            box = _footprint_box(center, yaw, item.width, item.depth)
            if self.clear(box, margin=margin):
                self._place(item, yaw, center, box)
                return True
        return False

    def table_group(self, item: Furniture, chair_kind: str) -> None:
        """A table in the open with chairs along its long sides, facing it."""
        if not self.free_standing(item, margin=0.7):
            return
        box = self.room.footprints[-1]
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        along_x = (box[2] - box[0]) >= (box[3] - box[1])
        length = max(box[2] - box[0], box[3] - box[1])
        half = min(box[2] - box[0], box[3] - box[1]) / 2
        n = max(1, int(length / 0.65))
        for k in range(n):
            s = -length / 2 + (k + 0.5) * length / n
            for side in (-1, 1):
                if self.rng.random() < 0.2:
                    continue
                chair = fb.BUILDERS[chair_kind](self.rng, self.traits)
                off = half + chair.depth / 2 - 0.12
                pos = np.array([cx + s, cy + side * off]) if along_x else np.array([cx + side * off, cy + s])
                face = np.array([cx, cy]) - pos
                face = np.where(np.abs(face) == np.abs(face).max(), np.sign(face), 0.0)
                yaw = facing_yaw(face)
                cbox = _footprint_box(pos, yaw, chair.width, chair.depth)
                others = [f for f in self.room.footprints if f is not box]
                if self.inside(cbox) and not any(_overlaps(cbox, f) for f in others):
                    self.room.footprints.append(cbox)
                    self.add(chair.parts, yaw, (pos[0], pos[1], 0.0))

    def _place(self, item: Furniture, yaw: float, center, box) -> None:
        self.room.footprints.append(box)
        self.add(item.parts, yaw, (center[0], center[1], 0.0))
        if item.top > 0:
            self.room.tops.append((box, item.top))

    def furnish(self) -> None:
        """Place the room type's furniture, then a chair at every desk."""
        rng, traits = self.rng, self.traits
        chair_kind = "chair" if traits.name == "structured3d" else "office_chair"
        for builder, where, lo, hi in ROOM_PROGRAMS[self.room.room_type]:
            for _ in range(int(rng.integers(lo, hi + 1))):
                item = fb.BUILDERS[builder](rng, traits)
                if where == "group":
                    dining = "chair" if self.room.room_type in ("kitchen", "living_room") else chair_kind
                    self.table_group(item, dining)
                elif where == "free":
                    self.free_standing(item)
                else:
                    placed = self.against_wall(item)
                    if placed is not None and builder == "desk":
                        self._desk_chair(placed[0], placed[1], item.depth, chair_kind)

    def _desk_chair(self, center, normal, depth: float, kind: str) -> None:
        chair = fb.BUILDERS[kind](self.rng, self.traits)
        pos = center + normal * (depth / 2 + chair.depth / 2 - 0.05)
        yaw = facing_yaw(-normal)
        box = _footprint_box(pos, yaw, chair.width, chair.depth)
        if self.inside(box):
            self.room.footprints.append(box)
            self.add(chair.parts, yaw, (pos[0], pos[1], 0.0))

    def wall_items(self) -> None:
        """Pictures, boards, mirrors and TVs on free stretches of wall."""
        rng, traits = self.rng, self.traits
        for kind, lo, hi in WALL_ITEMS[self.room.room_type]:
            for _ in range(int(rng.integers(lo, hi + 1))):
                if kind == "picture":
                    w = rng.uniform(traits.picture_width.lo, traits.picture_width.hi)
                    h, z0, thick = w * rng.uniform(0.6, 1.0), rng.uniform(1.2, 1.5), 0.025
                elif kind == "board":
                    w, h, z0, thick = rng.uniform(1.2, 2.4), rng.uniform(0.9, 1.2), rng.uniform(0.85, 1.0), 0.02
                elif kind == "mirror":
                    w, h, z0, thick = rng.uniform(0.5, 0.9), rng.uniform(0.6, 0.9), 1.1, 0.01
                else:
                    w = rng.uniform(0.9, 1.4)
                    h, z0, thick = w * 0.58, rng.uniform(1.0, 1.2), 0.05
                z1 = min(z0 + h, self.room.height - 0.1)
                for _ in range(MAX_TRIES):
                    wall = self.room.walls[int(rng.integers(len(self.room.walls)))]
                    a = rng.uniform(0.0, max(0.0, wall.length - w))
                    if wall.free(a, a + w, z0, z1, margin=0.1):
                        part = fb.wall_panel(rng, kind, w, z1 - z0, z0, thick)
                        wall.openings.append((a, a + w, z0, z1))
                        self._wall_part(wall, a + w / 2, [part], z0, z1, w / 2)
                        break

    def clutter(self) -> None:
        """Small boxes and books on tables and cabinets, boxes and bins on the floor."""
        rng = self.rng
        lo, hi = self.traits.clutter_per_room
        for _ in range(int(rng.integers(lo, hi + 1))):
            if self.room.tops and rng.random() < 0.6:
                (x0, y0, x1, y1), z = self.room.tops[int(rng.integers(len(self.room.tops)))]
                w, d, h = rng.uniform(0.08, 0.35), rng.uniform(0.08, 0.3), rng.uniform(0.04, 0.3)
                if x1 - x0 <= w or y1 - y0 <= d:
                    continue
                x, y = rng.uniform(x0 + w / 2, x1 - w / 2), rng.uniform(y0 + d / 2, y1 - d / 2)
                kind = "books" if rng.random() < 0.4 else "box"
                part = Part(kind).box((-w / 2, -d / 2, 0.0), (w / 2, d / 2, h), hide=("-z",))
                self.add([part], 0.0, (x, y, z))
            else:
                item = fb.BUILDERS["box" if rng.random() < 0.7 else "trash_can"](rng, self.traits)
                if not self.against_wall(item):
                    self.free_standing(item, margin=0.1)


def build_room(rng: np.random.Generator, traits: StyleTraits, room_type: str) -> Room:
    """One furnished room of `room_type` in the given style's conventions."""
    layout = Layout(rng, traits, room_type)
    layout.openings()
    if traits.beams_columns:
        layout.beams_and_columns()
    layout.furnish()
    layout.wall_items()
    layout.clutter()
    layout.shell()
    return layout.room
