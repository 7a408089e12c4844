"""innerear: an open reproduction of AutoCasNet (Hussain et al., Sci Rep 2021).

Automatic segmentation of the human inner ear in micro-CT with an auto-context cascade of
2D U-Nets. Modules: ``config`` (profiles), ``phantom`` (synthetic data; a subpackage), ``io``,
``preprocess``, ``backbones``, ``train``, ``cascade``, ``metrics``, ``table1``, ``viz``,
``performance`` (measurement records), ``pipeline`` and ``cli``.
"""
__version__ = "0.1.0"
