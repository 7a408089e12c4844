"""data: what the networks are fed (floor 3; imports settings, io and metrics).

Owns the synthetic phantoms (:mod:`~innerear.data.phantom`), the real Hear-EU data set
(:mod:`~innerear.data.hear_eu`), the memory-bounded resampler
(:mod:`~innerear.data.resample`), scan geometry in physical units and the one world-grid
resampler (:mod:`~innerear.data.scan`), the paper's preparation (:mod:`~innerear.data.preprocess`:
pairs, resampling to N³, folds), the intensity normalisers (:mod:`~innerear.data.normalize`) and a profile's cohort, its prepared specimens and
folds in one call (:mod:`~innerear.data.cohort`). No deep learning here."""
