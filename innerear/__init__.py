"""innerear: an open reproduction of AutoCasNet (Hussain et al., Sci Rep 2021).

Automatic segmentation of the human inner ear in micro-CT with an auto-context cascade of
2D U-Nets. Modules, in data-flow order (data → model → cascade → evaluation → app):

- settings and places: ``config`` (profiles), ``layout`` (run tree, cache, saved
  predictions), ``views`` (orientations, stage orders, slicing conventions);
- data: ``phantom`` (synthetic specimens; a subpackage, one module per generator step), ``hear_eu`` (the real data set), ``io`` (volume
  files), ``resample`` (memory-bounded cubic B-spline), ``preprocess`` (pairs, resampling,
  z-scoring or per-scan percentile normalisation, folds);
- model: ``backbones`` (U-Net, ResU-Net, SE-U-Net), ``train`` (fitting, checkpoints);
- cascade: ``cascade`` (the one inference engine, :class:`~innerear.cascade.Cascade`, and
  cascade training), ``fastinfer`` (its slice-prediction kernels and region of interest),
  ``robust`` (the shipped segmenter's recipe: physical units, domain randomisation, structures);
- evaluation (no Keras import): ``metrics`` (the paper's metrics, Dice, largest component),
  ``evaluation`` (saved predictions → per-volume table), ``table1`` (Table 1, tests), ``compare`` (per-structure
  scores, cascade against baseline with generated sentences);
- app: ``timing`` (engine timings for the book), ``performance`` (measurement records),
  ``mesh`` (surfaces, STL), ``viz`` (figures), ``cochlea`` (duct length and turns),
  ``segment`` (your own scan), ``pipeline``
  (``make reproduce``) and ``cli``.

Apart from ``phantom`` the modules stay in one flat package: the order above is the reading order.
"""
__version__ = "0.1.0"
