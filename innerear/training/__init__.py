"""training: fitting networks (floor 6; imports every floor below, the engine included).

Owns fitting one network with resumable checkpoints (:mod:`~innerear.training.fit`), the
paper recipe's cascade trainer (:mod:`~innerear.training.cascade`) and the shipped
segmenter's robust recipe (:mod:`~innerear.training.robust`). Training writes the held-out
predictions through the engine, so it sits above :mod:`innerear.inference`."""
