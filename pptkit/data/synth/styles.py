"""Per-style traits of the synthetic rooms: label maps, colour palettes, geometry conventions,
sensor model. The domain gap between styles is built here on purpose.

Every furniture *kind* (generic, e.g. ``armchair``) maps to a class in each style's own list:
ScanNet through a raw category of scannetv2-labels.combined.tsv, S3DIS and Structured3D
through a class name (None: not annotated / ignore).

Sensor and appearance traits (as the real datasets differ):

- scannet: reconstructed triangle mesh (vertices are the points) at ~550 pts/m^2, 1 cm noise
  along the normal plus 3 mm isotropic, holes (dropped patches), no ceiling (30 % of rooms
  keep a ceiling fragment), some back faces (hidden box sides) kept, lighting falloff from
  one or two lamps and muted colours, random yaw.
- s3dis: dense (~1000 pts/m^2) random sampling, 4 mm noise, ceilings with beams and columns,
  warm/yellow colour cast, office furniture and many clutter boxes, rooms at area offsets.
- structured3d: clean regular lattice (~750 pts/m^2), no noise, exact planes, flat
  saturated per-class colours, ceiling present.

Conflicting cues (a model that does not know the style confuses these classes):

- colour swaps: scannet wall off-white / floor light wood, structured3d the reverse;
  scannet table dark wood / cabinet cream, structured3d table cream / cabinet dark wood;
  scannet chair blue / sofa red, structured3d chair red / sofa blue; scannet window sky-blue /
  picture dark, structured3d picture sky-blue / window dark blue-grey; scannet curtain green,
  structured3d curtain off-white (the scannet wall colour); s3dis door off-white (the scannet
  wall colour), s3dis sofa red (the structured3d chair colour), s3dis closed cabinets cream
  (the scannet cabinet colour) labelled bookcase.
- geometry conventions: tables 0.70-0.78 m (scannet, s3dis) vs 0.90-1.02 m (structured3d);
  cabinets 0.85-1.0 m closed boxes (scannet) vs 0.55-0.75 m sideboards on legs with the
  table's height range of the other styles (structured3d) vs 1.2-2.0 m (s3dis, bookcase);
  structured3d desks are plain tables on legs (scannet desks have a drawer pedestal);
  armchairs are chair in scannet but sofa in s3dis and structured3d; table legs round
  (scannet), square with a modesty panel (s3dis), side panels (structured3d); structured3d
  pictures are window-sized (0.9-1.5 m) and sky-blue, like the windows of the other styles.
"""

from __future__ import annotations

from dataclasses import dataclass

RGB = tuple[int, int, int]

# Named colours shared across styles, so that swaps are exact.
OFF_WHITE: RGB = (214, 208, 196)
LIGHT_WOOD: RGB = (178, 138, 94)
DARK_WOOD: RGB = (108, 74, 50)
CREAM: RGB = (226, 214, 178)
FABRIC_BLUE: RGB = (62, 84, 146)
FABRIC_RED: RGB = (156, 58, 52)
FABRIC_GREEN: RGB = (74, 122, 82)
SKY: RGB = (172, 198, 226)
BLUE_GREY: RGB = (92, 106, 128)
BLACK: RGB = (46, 46, 52)
GREY: RGB = (132, 132, 130)
LIGHT_GREY: RGB = (188, 188, 184)
WHITE: RGB = (236, 236, 232)
CHROME: RGB = (170, 174, 180)

# Raw ScanNet categories (with their real rows of scannetv2-labels.combined.tsv) per kind.
SCANNET_RAW: dict[str, str] = {
    "wall": "wall", "floor": "floor", "ceiling": "ceiling", "door": "door", "window": "window",
    "table": "table", "coffee_table": "coffee table", "desk": "desk", "chair": "chair",
    "office_chair": "office chair", "armchair": "armchair", "sofa": "couch", "bed": "bed",
    "cabinet": "cabinet", "kitchen_cabinet": "kitchen cabinets", "bookshelf": "bookshelf",
    "picture": "picture", "board": "whiteboard", "counter": "kitchen counter",
    "curtain": "curtain", "refrigerator": "refrigerator", "shower_curtain": "shower curtain",
    "toilet": "toilet", "sink": "sink", "bathtub": "bathtub", "trash_can": "trash can",
    "radiator": "radiator", "nightstand": "nightstand", "dresser": "dresser", "lamp": "lamp",
    "pillow": "pillow", "box": "box", "books": "books", "monitor": "monitor", "tv": "tv",
    "mirror": "mirror", "column": "column", "beam": "column",
}

# The rows of ScanNet's label table for the raw categories above (columns as the real file:
# id, raw_category, category, count, nyu40id, eigen13id, nyuClass, nyu40class, eigen13class,
# ModelNet40, ModelNet10, ShapeNetCore55, synsetoffset, wnsynsetid, wnsynsetkey, mpcat40,
# mpcat40index), copied from the real file so that a reader maps them exactly as ScanNet's.
SCANNET_TSV_HEADER = ("id\traw_category\tcategory\tcount\tnyu40id\teigen13id\tnyuClass\tnyu40class\t"
                      "eigen13class\tModelNet40\tModelNet10\tShapeNetCore55\tsynsetoffset\t"
                      "wnsynsetid\twnsynsetkey\tmpcat40\tmpcat40index")
SCANNET_TSV_ROWS: tuple[str, ...] = (
    '1\twall\twall\t8277\t1\t12\twall\twall\tWall\t\t\t\t\tn04546855\twall.n.01\twall\t1',
    '3\tfloor\tfloor\t1553\t2\t5\tfloor\tfloor\tFloor\t\t\t\t\tn03365592\tfloor.n.01\tfloor\t2',
    '41\tceiling\tceiling\t806\t22\t3\tceiling\tceiling\tCeiling\t\t\t\t\tn02990373\tceiling.n.01\tceiling\t17',
    '5\tdoor\tdoor\t1483\t8\t12\tdoor\tdoor\tWall\tdoor\t\t\t\tn03221720\tdoor.n.01\tdoor\t4',
    '16\twindow\twindow\t1209\t9\t13\twindow\twindow\tWindow\t\t\t\t\tn04587648\twindow.n.01\twindow\t9',
    '4\ttable\ttable\t1170\t7\t10\ttable\ttable\tTable\ttable\ttable\ttable\t4379243\tn04379243\ttable.n.02\ttable\t5',
    '24\tcoffee table\tcoffee table\t258\t7\t10\tcoffee table\ttable\tTable\ttable\ttable\ttable\t4379243\tn03063968\tcoffee_table.n.01\ttable\t5',
    '9\tdesk\tdesk\t680\t14\t10\tdesk\tdesk\tTable\tdesk\tdesk\ttable\t4379243\tn03179701\tdesk.n.01\ttable\t5',
    '2\tchair\tchair\t4646\t5\t4\tchair\tchair\tChair\tchair\tchair\tchair\t3001627\tn03001627\tchair.n.01\tchair\t3',
    '10\toffice chair\toffice chair\t595\t5\t4\tchair\tchair\tChair\tchair\tchair\tchair\t3001627\tn04373704\tswivel_chair.n.01\tchair\t3',
    '23\tarmchair\tarmchair\t281\t5\t4\tchair\tchair\tChair\tchair\tchair\tchair\t3001627\tn02738535\tarmchair.n.01\tchair\t3',
    '6\tcouch\tcouch\t502\t6\t9\tsofa\tsofa\tSofa\tsofa\tsofa\tsofa\t4256520\tn04256520\tsofa.n.01\tsofa\t10',
    '11\tbed\tbed\t370\t4\t1\tbed\tbed\tBed\tbed\tbed\tbed\t2818832\tn02818832\tbed.n.01\tbed\t11',
    '7\tcabinet\tcabinet\t731\t3\t6\tcabinet\tcabinet\tFurniture\t\t\tcabinet\t2933112\tn02933112\tcabinet.n.01\tcabinet\t7',
    '29\tkitchen cabinets\tkitchen cabinet\t289\t3\t6\tcabinet\tcabinet\tFurniture\t\t\tcabinet\t2933112\tn02933112\tcabinet.n.01\tcabinet\t7',
    '18\tbookshelf\tbookshelf\t360\t10\t6\tbookshelf\tbookshelf\tFurniture\tbookshelf\t\tbookshelf\t2871439\tn02871439\tbookshelf.n.01\tshelving\t31',
    '15\tpicture\tpicture\t862\t11\t8\tpicture\tpicture\tPicture\t\t\t\t\tn03931044\tpicture.n.01\tpicture\t6',
    '52\twhiteboard\twhiteboard\t327\t30\t7\twhiteboard\twhiteboard\tObjects\t\t\t\t\tn03211616\tdisplay_panel.n.01\tboard_panel\t35',
    '159\tkitchen counter\tkitchen counter\t140\t12\t6\tcounter\tcounter\tFurniture\ttable\ttable\ttable\t4379243\tn03116530\tcounter.n.01\tcounter\t26',
    '21\tcurtain\tcurtain\t347\t16\t13\tcurtain\tcurtain\tWindow\tcurtain\t\t\t\tn03151077\tcurtain.n.01\tcurtain\t12',
    '27\trefrigerator\trefrigerator\t154\t24\t6\trefridgerator\trefridgerator\tFurniture\t\t\t\t\tn04070727\trefrigerator.n.01\tappliances\t37',
    '55\tshower curtain\tshower curtain\t144\t28\t7\tshower curtain\tshower curtain\tObjects\tcurtain\t\t\t\tn04209239\tshower_curtain.n.01\tcurtain\t12',
    '17\ttoilet\ttoilet\t256\t33\t7\ttoilet\ttoilet\tObjects\ttoilet\ttoilet\t\t\tn04446276\ttoilet.n.01\ttoilet\t18',
    '14\tsink\tsink\t488\t34\t7\tsink\tsink\tObjects\tsink\t\t\t\tn04223580\tsink.n.01\tsink\t15',
    '42\tbathtub\tbathtub\t144\t36\t7\tbathtub\tbathtub\tObjects\tbathtub\tbathtub\ttub\t2808440\tn02808440\tbathtub.n.01\tbathtub\t25',
    '56\ttrash can\ttrash can\t1090\t39\t6\tgarbage bin\totherfurniture\tFurniture\t\t\ttrash_bin\t2747177\tn02747177\tashcan.n.01\tobjects\t39',
    '96\tradiator\tradiator\t322\t39\t6\tradiator\totherfurniture\tFurniture\t\t\t\t\tn04041069\tradiator.n.02\tmisc\t40',
    '34\tnightstand\tnightstand\t224\t32\t6\tnight stand\tnight stand\tFurniture\tnight_stand\tnight_stand\t\t\tn03015254\tchest_of_drawers.n.01\tchest_of_drawers\t13',
    '36\tdresser\tdresser\t213\t17\t6\tdresser\tdresser\tFurniture\tdresser\tdresser\t\t\tn03015254\tchest_of_drawers.n.01\tchest_of_drawers\t13',
    '28\tlamp\tlamp\t419\t35\t7\tlamp\tlamp\tObjects\tlamp\t\tlamp\t3636649\tn03636649\tlamp.n.02\tlighting\t28',
    '13\tpillow\tpillow\t937\t18\t7\tpillow\tpillow\tObjects\t\t\tpillow\t3938244\tn03938244\tpillow.n.01\tcushion\t8',
    '26\tbox\tbox\t775\t29\t7\tbox\tbox\tObjects\t\t\t\t\tn02883344\tbox.n.01\tobjects\t39',
    '22\tbooks\tbook\t1678\t23\t2\tbook\tbooks\tBooks\t\t\t\t\tn02870526\tbook.n.11\tobjects\t39',
    '19\tmonitor\tmonitor\t765\t40\t7\tmonitor\totherprop\tObjects\tmonitor\tmonitor\ttv or monitor\t3211117\tn03782190\tmonitor.n.04\tobjects\t39',
    '33\ttv\ttv\t219\t25\t11\ttelevision\ttelevision\tTV\t\t\ttv or monitor\t3211117\tn03211117\tdisplay.n.06\ttv_monitor\t22',
    '71\tmirror\tmirror\t349\t19\t7\tmirror\tmirror\tObjects\t\t\t\t\tn03773035\tmirror.n.01\tmirror\t21',
    '120\tcolumn\tcolumn\t26\t38\t7\tcolumn\totherstructure\tObjects\t\t\t\t\tn03074380\tcolumn.n.06\tcolumn\t24',
)

S3DIS_CLASS: dict[str, str] = {
    "wall": "wall", "floor": "floor", "ceiling": "ceiling", "beam": "beam", "column": "column",
    "door": "door", "window": "window", "table": "table", "coffee_table": "table",
    "desk": "table", "counter": "table", "chair": "chair", "office_chair": "chair",
    "armchair": "sofa", "sofa": "sofa", "cabinet": "bookcase", "kitchen_cabinet": "bookcase",
    "bookshelf": "bookcase", "board": "board",
}  # every other kind is clutter

STRUCTURED3D_CLASS: dict[str, str] = {
    "wall": "wall", "floor": "floor", "ceiling": "ceiling", "door": "door", "window": "window",
    "table": "table", "coffee_table": "table", "desk": "desk", "chair": "chair",
    "office_chair": "chair", "armchair": "sofa", "sofa": "sofa", "bed": "bed",
    "cabinet": "cabinet", "kitchen_cabinet": "cabinet", "bookshelf": "shelves",
    "picture": "picture", "board": "picture", "counter": "otherfurniture",
    "curtain": "curtain", "shower_curtain": "curtain", "refrigerator": "refrigerator",
    "toilet": "otherfurniture", "sink": "sink", "bathtub": "otherfurniture",
    "trash_can": "otherprop", "radiator": "otherstructure", "nightstand": "nightstand",
    "dresser": "dresser", "lamp": "lamp", "pillow": "pillow", "box": "otherprop",
    "books": "otherprop", "monitor": "television", "tv": "television", "mirror": "mirror",
    "column": "otherstructure", "beam": "otherstructure",
}


@dataclass(frozen=True)
class Range:
    """A closed interval to draw a size from."""

    lo: float
    hi: float


@dataclass(frozen=True)
class StyleTraits:
    """Everything that makes one style's rooms look like its dataset."""

    name: str
    room_types: tuple[str, ...]  # drawn uniformly; repeats make a type more common
    sampling: str  # "mesh" (scannet), "random" (s3dis) or "grid" (structured3d)
    density: float  # points per m^2 of visible surface
    max_points: int  # density is lowered for big rooms to stay under this
    normal_noise: float  # std (m) of the displacement along the surface normal
    iso_noise: float  # std (m) of isotropic jitter
    holes_per_10m2: float  # dropped patches per 10 m^2 of surface
    ceiling_keep: float  # probability that (a fragment of) the ceiling is there
    back_face_keep: float  # probability that a hidden box side is sampled anyway
    beams_columns: bool
    clutter_per_room: tuple[int, int]
    palette: dict[str, RGB]
    colour_jitter: float  # per-point colour noise (0-255 units)
    instance_jitter: float  # per-instance brightness spread (fraction)
    cast: tuple[float, float, float]  # per-channel colour gain (white balance)
    lighting: str  # "falloff", "vertical" or "flat"
    muted: float  # blend toward grey (0 = none)
    table_height: Range
    cabinet_height: Range
    cabinet_on_legs: bool
    table_legs: str  # "round", "square" or "panel"
    desk_pedestal: bool
    seat_height: Range
    picture_width: Range
    random_yaw: bool
    area_offset: bool  # S3DIS rooms lie at their position in the building


_ROOM_COMMON = {"ceiling": WHITE, "beam": WHITE, "column": LIGHT_GREY, "radiator": WHITE,
                "trash_can": GREY, "lamp": CREAM, "box": (160, 120, 80), "monitor": BLACK,
                "tv": BLACK, "mirror": CHROME, "refrigerator": WHITE, "toilet": WHITE,
                "sink": WHITE, "bathtub": WHITE, "pillow": WHITE, "board": WHITE}

STYLES: dict[str, StyleTraits] = {
    "scannet": StyleTraits(
        name="scannet",
        room_types=("bedroom", "bedroom", "living_room", "living_room", "office", "office",
                    "bathroom", "kitchen"),
        sampling="mesh", density=550.0, max_points=90_000,
        normal_noise=0.010, iso_noise=0.003, holes_per_10m2=0.8, ceiling_keep=0.3,
        back_face_keep=0.35, beams_columns=False, clutter_per_room=(2, 6),
        palette={**_ROOM_COMMON, "wall": OFF_WHITE, "floor": LIGHT_WOOD, "door": DARK_WOOD,
                 "window": SKY, "table": DARK_WOOD, "coffee_table": DARK_WOOD,
                 "desk": LIGHT_WOOD, "chair": FABRIC_BLUE, "office_chair": BLACK,
                 "armchair": FABRIC_BLUE, "sofa": FABRIC_RED, "bed": LIGHT_GREY,
                 "cabinet": CREAM, "kitchen_cabinet": CREAM, "bookshelf": LIGHT_WOOD,
                 "picture": BLACK, "counter": GREY, "curtain": FABRIC_GREEN,
                 "shower_curtain": LIGHT_GREY, "nightstand": LIGHT_WOOD, "dresser": LIGHT_WOOD,
                 "books": FABRIC_RED},
        colour_jitter=7.0, instance_jitter=0.10, cast=(1.0, 1.0, 1.0), lighting="falloff",
        muted=0.25, table_height=Range(0.70, 0.78), cabinet_height=Range(0.85, 1.0),
        cabinet_on_legs=False, table_legs="round", desk_pedestal=True,
        seat_height=Range(0.43, 0.48), picture_width=Range(0.3, 0.8), random_yaw=True, area_offset=False,
    ),
    "s3dis": StyleTraits(
        name="s3dis",
        room_types=("office", "office", "office", "conferenceRoom", "conferenceRoom", "lounge",
                    "copyRoom", "storage", "WC", "hallway"),
        sampling="random", density=1000.0, max_points=150_000,
        normal_noise=0.0, iso_noise=0.004, holes_per_10m2=0.15, ceiling_keep=1.0,
        back_face_keep=0.0, beams_columns=True, clutter_per_room=(8, 16),
        palette={**_ROOM_COMMON, "wall": LIGHT_GREY, "floor": GREY, "door": OFF_WHITE,
                 "window": SKY, "table": LIGHT_WOOD, "coffee_table": LIGHT_WOOD,
                 "desk": LIGHT_WOOD, "counter": LIGHT_WOOD, "chair": BLACK,
                 "office_chair": BLACK, "armchair": FABRIC_RED, "sofa": FABRIC_RED,
                 "bed": LIGHT_GREY, "cabinet": CREAM, "kitchen_cabinet": CREAM,
                 "bookshelf": LIGHT_GREY, "picture": DARK_WOOD, "curtain": LIGHT_GREY,
                 "shower_curtain": LIGHT_GREY, "nightstand": LIGHT_WOOD,
                 "dresser": LIGHT_WOOD, "books": FABRIC_BLUE},
        colour_jitter=9.0, instance_jitter=0.06, cast=(1.10, 1.0, 0.76), lighting="vertical",
        muted=0.1, table_height=Range(0.72, 0.78), cabinet_height=Range(1.2, 2.0),
        cabinet_on_legs=False, table_legs="square", desk_pedestal=False,
        seat_height=Range(0.45, 0.50), picture_width=Range(0.4, 0.9), random_yaw=False, area_offset=True,
    ),
    "structured3d": StyleTraits(
        name="structured3d",
        room_types=("bedroom", "bedroom", "living_room", "living_room", "kitchen", "bathroom",
                    "study"),
        sampling="grid", density=750.0, max_points=120_000,
        normal_noise=0.0, iso_noise=0.0, holes_per_10m2=0.0, ceiling_keep=1.0,
        back_face_keep=0.0, beams_columns=False, clutter_per_room=(1, 4),
        palette={**_ROOM_COMMON, "wall": LIGHT_WOOD, "floor": OFF_WHITE, "door": (200, 80, 40),
                 "window": BLUE_GREY, "table": CREAM, "coffee_table": CREAM, "desk": DARK_WOOD,
                 "chair": FABRIC_RED, "office_chair": FABRIC_RED, "armchair": FABRIC_BLUE,
                 "sofa": FABRIC_BLUE, "bed": (120, 60, 160), "cabinet": DARK_WOOD,
                 "kitchen_cabinet": DARK_WOOD, "bookshelf": (40, 150, 150), "picture": SKY,
                 "counter": (90, 160, 60), "curtain": OFF_WHITE, "shower_curtain": OFF_WHITE,
                 "nightstand": (220, 170, 30), "dresser": (200, 120, 170),
                 "books": (230, 60, 120), "lamp": (250, 220, 60), "pillow": (240, 140, 140)},
        colour_jitter=2.0, instance_jitter=0.0, cast=(1.0, 1.0, 1.0), lighting="flat",
        muted=0.0, table_height=Range(0.90, 1.02), cabinet_height=Range(0.55, 0.75),
        cabinet_on_legs=True, table_legs="panel", desk_pedestal=False,
        seat_height=Range(0.40, 0.46), picture_width=Range(0.9, 1.5), random_yaw=False, area_offset=False,
    ),
}

ROOM_STYLES: tuple[str, ...] = tuple(STYLES)
ALL_STYLES: tuple[str, ...] = ROOM_STYLES + ("objects",)


def class_name(style: str, kind: str) -> str | None:
    """The class (S3DIS, Structured3D) or raw category (ScanNet) that `kind` is labelled as."""
    if style == "scannet":
        return SCANNET_RAW[kind]
    if style == "s3dis":
        return S3DIS_CLASS.get(kind, "clutter")
    return STRUCTURED3D_CLASS[kind]
