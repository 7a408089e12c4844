"""training: fitting networks (floor 6; imports every floor below, the engine included).

Owns fitting one network with resumable checkpoints (:mod:`~innerear.training.fit`), the
paper recipe's cascade trainer (:mod:`~innerear.training.cascade`) and the shipped
segmenter's robust recipe (:mod:`~innerear.training.robust`). Training writes the held-out
predictions through the engine, so it sits above :mod:`innerear.inference`.

One entry point per recipe, which the command line, the pipeline and the notebooks call:
:func:`innerear.training.paper.train_run` (the paper recipe: one backbone, fold and stage
order) and :func:`innerear.training.robust.train_robust` (the shipped segmenter)."""
