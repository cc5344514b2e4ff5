"""results.json shape, rich tables and the confusion-matrix PNG."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rich.console import Console

from pptkit.eval.metrics import classification_scores, segmentation_scores
from pptkit.eval.report import per_class_table, plot_confusion, results_table, write_results_json

NAMES = ("a", "b", "c", "d")
MATRIX = np.array([[3, 1, 0, 0], [0, 2, 1, 0], [1, 0, 1, 0], [0, 0, 0, 0]])


def _render(table) -> str:
    console = Console(record=True, width=120)
    console.print(table)
    return console.export_text()


def test_results_json_has_exact_shape(tmp_path):
    path = tmp_path / "results.json"
    write_results_json(path, {"s3dis": segmentation_scores(MATRIX, NAMES)})
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary left
    doc = json.loads(path.read_text())
    assert list(doc) == ["s3dis"]
    entry = doc["s3dis"]
    assert list(entry) == ["miou", "macc", "oa", "per_class"]
    assert entry["miou"] == pytest.approx(43 / 90)
    assert entry["macc"] == pytest.approx(23 / 36)
    assert entry["oa"] == pytest.approx(2 / 3)
    assert list(entry["per_class"]) == list(NAMES)
    for cls in entry["per_class"].values():
        assert list(cls) == ["iou", "acc", "support"]
        assert type(cls["support"]) is int
    assert entry["per_class"]["a"] == {"iou": pytest.approx(0.6), "acc": pytest.approx(0.75),
                                       "support": 4}
    assert entry["per_class"]["d"] == {"iou": None, "acc": None, "support": 0}
    assert "NaN" not in path.read_text()


def test_results_json_classification_entry(tmp_path):
    path = tmp_path / "results.json"
    scores = classification_scores(np.array([[2, 1], [0, 3]]), ("x", "y"))
    write_results_json(path, {"modelnet40": scores})
    entry = json.loads(path.read_text())["modelnet40"]
    assert entry == {"macc": pytest.approx((2 / 3 + 1) / 2), "oa": pytest.approx(5 / 6),
                     "per_class": {"x": {"acc": pytest.approx(2 / 3), "support": 3},
                                   "y": {"acc": 1.0, "support": 3}}}


def test_tables_show_percentages_and_dashes_for_undefined():
    results = {"s3dis": segmentation_scores(MATRIX, NAMES),
               "scannet": segmentation_scores(np.array([[5, 0], [1, 4]]), ("a", "e"))}
    summary = _render(results_table(results))
    assert "47.8" in summary and "63.9" in summary and "66.7" in summary  # 43/90, 23/36, 2/3
    cells = [[c.strip() for c in line.strip("│").split("│")]
             for line in _render(per_class_table(results)).splitlines() if line.startswith("│")]
    rows = {c[0]: c[1:] for c in cells}
    assert rows["a"] == ["60.0", "83.3"]  # 3/5 and 5/6
    assert rows["d"] == ["-", "-"]  # undefined in s3dis, absent from scannet
    assert rows["e"] == ["-", "80.0"]


def test_confusion_png_is_written_atomically(tmp_path):
    import matplotlib.image

    path = tmp_path / "confusion.png"
    plot_confusion(MATRIX, NAMES, path, title="s3dis val")
    assert [p.name for p in tmp_path.iterdir()] == ["confusion.png"]
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 5_000
    image = matplotlib.image.imread(path)
    assert image.shape[0] >= 600 and image.shape[1] >= 600
    with pytest.raises(ValueError, match="class names"):
        plot_confusion(MATRIX, NAMES[:2], tmp_path / "bad.png", title="x")
    assert not (tmp_path / "bad.png").exists()


def test_tables_print_names_literally():
    names = ("[red]chair", "[b]", "wall")
    scores = {"[i]mine": segmentation_scores(np.eye(3, dtype=np.int64), names)}
    text = _render(results_table(scores)) + _render(per_class_table(scores))
    for name in (*names, "[i]mine"):
        assert name in text
