"""Pinned output of the phantom generator: a change that alters what a seed generates fails here.

The digests were taken from the generator before it was split into a subpackage (and the
split reproduced them, with every file of the smoke and demo sets, byte for byte). If a
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
SHAPE = (35, 40, 33)
ARRAYS = {
    "image": "90aac2b95e9ca7c169afe2bcbea75486bb01b5a68aab3c9c4d0be20afe10becc",
    "label": "eb9eb91106781760993a3ce51cd24ef3f6621ab09a3893c43ecc218abd7fb4c0",
    "structures": "2fae0ec73f763e579b0374d895a2eb33fc76442b04d253fa699d9a6265e21394",
}
# the written .nii.gz files, decompressed (header + data; independent of the zlib build)
FILES = {
    "image": "e9f2b23e1d4b1631b34e70fe5a180ff4068b251bb704c907e4eb4f4ef65e15da",
    "label": "b859a62f0822ce6cd800e0fbef803f301980ceb3ae0037bc30f8aa3b6fb50797",
}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def specimen():
    return ph.generate_specimen(0, 0, get_profile("smoke").phantoms)


def test_smoke_specimen_arrays_are_pinned(specimen):
    assert specimen.image.shape == SHAPE
    assert specimen.meta["version"] == ph.PHANTOM_VERSION == 1
    got = {k: _sha256(getattr(specimen, k).tobytes()) for k in ARRAYS}
    assert got == ARRAYS


def test_smoke_specimen_files_are_pinned(specimen, tmp_path):
    entry = ph.write_specimen(specimen, tmp_path)
    got = {k: _sha256(gzip.decompress((tmp_path / entry[k]).read_bytes())) for k in FILES}
    assert got == FILES
