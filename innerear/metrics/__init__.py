"""metrics: everything measured from a mask (floor 2; imports :mod:`innerear.settings` and :mod:`innerear.io`).

Owns the paper's per-volume metrics, distances, largest component and fragmentation
(:mod:`~innerear.metrics.scores`, re-exported here: ``innerear.metrics.evaluate``), the
cochlear duct length and turns (:mod:`~innerear.metrics.cochlea`), the anatomy measured
from a structure map (:mod:`~innerear.metrics.anatomy`: cochlear path, handedness,
topology; :mod:`~innerear.metrics.morphometry` and :mod:`~innerear.metrics.canals`: volumes,
A/B values, turn areas, canal geometry) and the published human measurements they are set
beside (:mod:`~innerear.metrics.literature`, with its table in ``reference/``). NumPy, SciPy and scikit-image only: no deep learning, so results code and the
data floor (phantoms that measure themselves, the label-resampling check) can use it.
It sits below :mod:`innerear.data` for that reason."""
from innerear.metrics.components import (CONNECTIVITY, bounding_box, largest_component, major_components, near_largest,
                                         topology)
from innerear.metrics.scores import (
                                     METRIC_KEYS,
                                     DistanceMethod,
                                     as_mask,
                                     check_spacing,
                                     components_per_slice,
                                     confusion_counts,
                                     dice,
                                     evaluate,
                                     fragmentation,
                                     overlap_metrics,
                                     per_structure,
                                     roc_auc,
                                     structure_labels,
                                     structure_regions,
                                     surface,
                                     surface_distances,
)

__all__ = ["CONNECTIVITY", "METRIC_KEYS", "bounding_box", "major_components", "DistanceMethod", "as_mask", "check_spacing", "components_per_slice",
           "confusion_counts", "dice", "evaluate", "fragmentation", "largest_component", "near_largest", "overlap_metrics",
           "per_structure", "roc_auc", "structure_labels", "structure_regions", "surface", "surface_distances", "topology"]
