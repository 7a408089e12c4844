"""reporting: the whole run and what a reader sees (floor 8; imports every floor below).

Owns ``innerear reproduce`` (:mod:`~innerear.reporting.pipeline`), measurement records and
their rendering (:mod:`~innerear.reporting.performance`), engine timings for the book
(:mod:`~innerear.reporting.timing`) and the notebooks' figures
(:mod:`~innerear.reporting.figures`). Only :mod:`innerear.cli` sits above it."""
