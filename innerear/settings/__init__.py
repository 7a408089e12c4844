"""settings: what every floor agrees on (floor 0; imports nothing else of the package).

Owns the named profiles (:mod:`~innerear.settings.profiles`: one set of sizes per use), the
slice views and stage orders (:mod:`~innerear.settings.views`), the run-tree and cache
layout on disk (:mod:`~innerear.settings.layout`) and the structure table
(:mod:`~innerear.settings.structures`: names, label values, colours) with their standard codes
(:mod:`~innerear.settings.terminology`). Plain Python and
NumPy only, so any floor, the notebooks and the results code can read them cheaply."""
