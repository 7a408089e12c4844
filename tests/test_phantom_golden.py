"""Pinned output of the phantom generator: a change that alters what a seed generates fails here.

The digests were retaken when the anatomy draws were calibrated against human morphometry
(issue 21, ``PHANTOM_VERSION`` 2); the earlier ones dated from before the generator was
split into a subpackage. If a
change is *meant* to alter the phantoms (or a numpy/scipy/nibabel upgrade does), bump
``PHANTOM_VERSION`` when the generator changed, check the new phantoms, and update the
digests here deliberately.
"""
from __future__ import annotations

import gzip
import hashlib

import pytest

from innerear.data import phantom as ph
from innerear.settings.profiles import get_profile

# specimen 0 of the smoke set drawn from seed 0
SHAPE = (34, 32, 34)
ARRAYS = {
    "image": "e5ab9116ec1f1dfd6921aa2210c48edc5ed165d2d1f14e7d59391c13890dff62",
    "label": "c3f7129a86a15477234b92b0af956eb3c5c3d9446a7803f06651d1b037b07703",
    "structures": "1542ddb8cb384d7f854f57fe0059d41b0a5f30fdc97d02c17e97b04d542c7819",
}
# the written .nii.gz files, decompressed (header + data; independent of the zlib build)
FILES = {
    "image": "029ca7c00049dd164bdc3b23a7ffecd36dfe4eecd7ec97f3d7ccdb7b240a7764",
    "label": "e5947d32cf79e73b980950b5eaa576ce913ea9ecc754b724c56355c0482b5a76",
}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def specimen():
    return ph.generate_specimen(0, 0, get_profile("smoke").phantoms)


def test_smoke_specimen_arrays_are_pinned(specimen):
    assert specimen.image.shape == SHAPE
    assert specimen.meta["version"] == ph.PHANTOM_VERSION == 2
    got = {k: _sha256(getattr(specimen, k).tobytes()) for k in ARRAYS}
    assert got == ARRAYS


def test_smoke_specimen_files_are_pinned(specimen, tmp_path):
    entry = ph.write_specimen(specimen, tmp_path)
    got = {k: _sha256(gzip.decompress((tmp_path / entry[k]).read_bytes())) for k in FILES}
    assert got == FILES
