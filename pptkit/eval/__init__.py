"""Evaluation: confusion-matrix metrics, test-time-augmentation voting, reports and PLY export."""

from pptkit.eval.export import default_palette, export_prediction_ply
from pptkit.eval.metrics import (
    ClassificationScores,
    ConfusionMatrix,
    SegmentationScores,
    classification_scores,
    merge,
    segmentation_scores,
)
from pptkit.eval.report import (
    per_class_table,
    plot_confusion,
    results_table,
    scores_to_json,
    write_results_json,
)
from pptkit.eval.voting import TTAView, VoteAccumulator, tta_views

__all__ = [
    "ClassificationScores", "ConfusionMatrix", "SegmentationScores", "TTAView", "VoteAccumulator",
    "classification_scores", "default_palette", "export_prediction_ply", "merge",
    "per_class_table", "plot_confusion", "results_table", "scores_to_json",
    "segmentation_scores", "tta_views", "write_results_json",
]
