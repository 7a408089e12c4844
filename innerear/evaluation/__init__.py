"""evaluation: results of the reproduction (floor 7; never imports Keras).

Owns the per-volume table of saved held-out predictions (:mod:`~innerear.evaluation.results`),
Table 1 and its Wilcoxon tests (:mod:`~innerear.evaluation.table1`), the per-structure and
cascade-against-baseline comparisons (:mod:`~innerear.evaluation.compare`) and the paper's
own figures (``paper/``: Table 1 and runtimes as CSV, with their source)."""
