"""innerear: an open reproduction of AutoCasNet (Hussain et al., Sci Rep 2021).

Automatic segmentation of the human inner ear in micro-CT with an auto-context cascade of
2D U-Nets. The subpackages are floors, in the order the data flows; a floor imports only
from the floors below it (``tests/test_layering.py`` enforces it):

0. ``settings``    profiles, slice views, run-tree layout, the structure table
1. ``io``          volume files (NIfTI, NRRD, MetaImage, DICOM, TIFF), STL meshes, atomic writes
2. ``metrics``     everything measured from a mask: the paper's metrics, cochlea, anatomy
3. ``data``        phantoms, the Hear-EU loader, resampling, preparation, normalisers, folds
4. ``nets``        U-Net / ResU-Net / SE-U-Net, losses, safe loading (first floor with Keras)
5. ``inference``   the one engine (``Cascade.predict``) and ``innerear segment``
6. ``training``    fitting, the paper recipe's cascade trainer, the robust recipe
7. ``evaluation``  per-volume results, Table 1, comparisons (no Keras)
8. ``reporting``   ``innerear reproduce``, performance records, timings, figures
9. ``cli``         the command line, a thin layer over the floors

``models/`` holds the shipped segmenters (package data, read by ``inference``).

The Python API: ``innerear.Segmenter`` (:class:`innerear.inference.segment.Segmenter`) and its
result ``innerear.SegmentResult``, imported on first use.
"""
__version__ = "0.1.0"

__all__ = ["Segmenter", "SegmentResult", "__version__"]


def __getattr__(name: str):
    """``innerear.Segmenter`` and ``innerear.SegmentResult`` (PEP 562): importing them eagerly would make
    every ``import innerear`` (and ``innerear --help``) load the inference floor with SciPy and the
    data floor, and would import upward from the floors below."""
    if name == "Segmenter":
        # lazy: the inference floor loads SciPy and the data floor; `import innerear` stays light
        from innerear.inference.segment import Segmenter

        return Segmenter
    if name == "SegmentResult":
        # lazy: as above
        from innerear.inference.segment import SegmentResult

        return SegmentResult
    raise AttributeError(f"module 'innerear' has no attribute {name!r}")
