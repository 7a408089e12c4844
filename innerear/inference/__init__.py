"""inference: trained networks applied to volumes (floor 5; imports every floor below).

Owns the one engine (:class:`~innerear.inference.engine.Cascade` and its slice kernels in
:mod:`~innerear.inference.kernels`) and segmenting a user's scan
(:mod:`~innerear.inference.segment`: model folders, checks, report, output files)."""
