"""DICOM value representations by their explicit-VR encoding (PS3.5 7.1.2).

One table for the node's wire parser (dicom_node/encoding.py) and the writers' strict
re-read (inference/writers/strict_check.py): a VR missing from a copy (SV and UV once were)
misreads every element after it.
"""

from __future__ import annotations


def _vrs(names: str) -> frozenset[bytes]:
    return frozenset(name.encode("ascii") for name in names.split())


#: VRs with two reserved bytes and a 4-byte length in explicit VR (PS3.5 Table 7.1-1).
LONG_VRS = _vrs("OB OD OF OL OV OW SQ SV UC UN UR UT UV")
#: VRs with a 2-byte length in explicit VR (PS3.5 Table 7.1-2).
SHORT_VRS = _vrs("AE AS AT CS DA DS DT FL FD IS LO LT PN SH SL SS ST TM UI UL US")
