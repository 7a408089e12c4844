"""inference: trained networks applied to volumes (floor 5; imports every floor below).

Owns the one engine (:class:`~innerear.inference.engine.Cascade` and its slice kernels in
:mod:`~innerear.inference.kernels`), the model-folder format and its one loader
(:mod:`~innerear.inference.modelfolder`) and segmenting a user's scan
(:mod:`~innerear.inference.segment`, with its checks in :mod:`~innerear.inference.checks` and
its measures and report in :mod:`~innerear.inference.report`)."""
