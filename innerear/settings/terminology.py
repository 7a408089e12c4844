"""Standard codes for the structures of :mod:`innerear.settings.structures`, for segmentation files
that say what each segment is (3D Slicer's ``.seg.nrrd`` TerminologyEntry, DICOM SEG segment descriptions).

Each code is a (coding scheme designator, code value, code meaning) triplet; ``SCT`` is SNOMED CT.
Where each code comes from (none is made up; a structure without a verified code of its own gets the
verified code of the structure that contains it, and says so):

- ``SCT 91723000 "Anatomical Structure"``: DICOM PS3.16, CID 7150 "Segmentation Property Categories"
  (as shipped in pydicom 3.0.2, ``pydicom.sr._concepts_dict``, key ``AnatomicalStructure``).
- ``SCT 22945000 "Inner ear"``: DICOM PS3.16, CID 7151 "Segmentation Property Types" and CID 4028
  "Craniofacial Anatomic Regions" (pydicom 3.0.2, key ``InnerEar``).
- ``SCT 80169004 "Cochlear structure"``: SNOMED CT International (concept 80169004, whose children
  are "Entire cochlea" and "Bony cochlea structure"; FHIR terminology server browser,
  https://tx-dev.fhir.org/snomed/45991000052106-20231130/?id=80169004&type=snomed). DICOM PS3.16
  lists no cochlea.
- ``SCT 279757004 "Semicircular canal"``: the SNOMED CT cross-reference of UBERON:0001840
  "semicircular canal" (Uberon, https://ontology.archive.data.humancellatlas.org/ontologies/hcao/terms?iri=http%3A%2F%2Fpurl.obolibrary.org%2Fobo%2FUBERON_0001840).
  DICOM PS3.16 lists no semicircular canal.
- vestibule: no SNOMED CT code for the vestibule of the (bony) labyrinth could be verified (DICOM
  PS3.16 lists none), so its segment is typed ``SCT 22945000 "Inner ear"``, the verified code of
  the structure containing it; its name ("Vestibule") tells it apart. Replace it when a verified
  code is at hand.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Code:
    """A coded concept: coding scheme designator, code value, code meaning."""

    scheme: str
    value: str
    meaning: str


ANATOMICAL_STRUCTURE = Code("SCT", "91723000", "Anatomical Structure")
INNER_EAR = Code("SCT", "22945000", "Inner ear")
COCHLEA = Code("SCT", "80169004", "Cochlear structure")
SEMICIRCULAR_CANAL = Code("SCT", "279757004", "Semicircular canal")

#: the segmented property type of each structure of the structure table, by structure name
STRUCTURE_TYPES: dict[str, Code] = {
    "cochlea": COCHLEA,
    "vestibule": INNER_EAR,  # no verified code of its own: see the module docstring
    "canals": SEMICIRCULAR_CANAL,
}
