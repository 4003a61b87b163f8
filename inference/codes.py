"""Every coded concept pacs-ai itself writes into DICOM objects, in one place.

Codes that describe *what a model segments* (segment category and type, algorithm family)
come from the model manifest (:class:`models.manifest.CodeSpec`) and are turned into
:class:`pydicom.sr.coding.Code` by :func:`code_from_spec`. Everything else that the SEG and
SR writers emit is defined here, checked against pydicom's copy of the PS3.16 code tables
by the unit tests (meanings included), so that a typo cannot reach a PACS.

Scheme designators: ``SCT`` (SNOMED CT; the retired ``SRT`` is never written), ``DCM``
(PS3.16 Annex D) and ``UCUM``. Units follow PS3.16 and dcmqi: volume in millilitres, coded
``("ml", UCUM, "milliliter")`` as in CID 7181 (``ml`` and ``mL`` are both valid UCUM;
DICOM's tables and dcmqi use the lower-case form; any valid UCUM unit is allowed by
CID 82, which is why pydicom's concept tables, listing only ``cm3`` and ``mm3``, lack it).
"""

from __future__ import annotations

from types import MappingProxyType

from pydicom.sr.coding import Code

from models.manifest import CodeSpec

# --- Measurement report (TID 1500) -------------------------------------------------------

#: Document title, CID 7021 (TID 1500 row 1).
IMAGING_MEASUREMENT_REPORT = Code("126000", "DCM", "Imaging Measurement Report")
#: Procedure reported, CID 100 (TID 1500 row 3).
IMAGING_PROCEDURE = Code("363679005", "SCT", "Imaging procedure")
#: Concept name of an Image Library entry (TID 1601 row 1), as highdicom writes it.
SOURCE = Code("260753009", "SCT", "Source")

# --- Measurements (TID 300 / TID 1419) ---------------------------------------------------

#: Concept name of a volume measurement, CID 7469 (Generic Intensity and Size Measurements).
VOLUME = Code("118565006", "SCT", "Volume")
#: Unit of every volume pacs-ai reports, CID 7181.
MILLILITER = Code("ml", "UCUM", "milliliter")
#: How a volume was measured, CID 7474: the voxel count times the voxel volume.
SUM_OF_SEGMENTED_VOXELS = Code("126030", "DCM", "Sum of segmented voxel method for volume")
#: Concept name of a CT intensity statistic, CID 7180 / 7469, in Hounsfield units.
ATTENUATION_COEFFICIENT = Code("112031", "DCM", "Attenuation Coefficient")
HOUNSFIELD_UNIT = Code("[hnsf'U]", "UCUM", "Hounsfield unit")
#: Derivations of intensity statistics over a region, CID 7464.
MEAN = Code("373098007", "SCT", "Mean")
MAXIMUM = Code("56851009", "SCT", "Maximum")
#: Area of a segment's outline on its key slice (TID 1410), CID 7469 / 7181.
AREA = Code("42798000", "SCT", "Area")
SQUARE_MILLIMETER = Code("mm2", "UCUM", "square millimeter")
#: Areas (a pixel count) on a radiograph without pixel spacing (UCUM annotation).
PIXELS = Code("{pixels}", "UCUM", "pixels")

# --- Classification findings (TID 1501 qualitative evaluation + probability) -----------

#: Values of a finding's qualitative evaluation, CID 240/241 (Present / Absent).
PRESENT = Code("52101004", "SCT", "Present")
ABSENT = Code("272519000", "SCT", "Absent")
#: Concept name of a class probability (PS3.16 Annex D).
PROBABILITY = Code("122157", "DCM", "Probability")
#: Unit of a probability, CID 7181.
NO_UNITS = Code("1", "UCUM", "no units")
#: TID 1500 row 12: the report-level container of qualitative evaluations (where the
#: labels a model did not find are reported Absent). A UMLS concept that pydicom's copy
#: of PS3.16 lacks; DCMTK's dcmsr names it CODE_UMLS_QualitativeEvaluations.
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
#: A result outside what its model declares plausible (``expect:``), delivered flagged:
#: "Quality Control" (CID 6051 et al.) evaluated as "Value out of range" (CID 42), with a
#: "Comment" (CID 12101) per value saying what was out of range (TID 1500 rows 13-14).
QUALITY_CONTROL = Code("110002", "DCM", "Quality Control")
VALUE_OUT_OF_RANGE = Code("114009", "DCM", "Value out of range")
COMMENT = Code("121106", "DCM", "Comment")

# --- Equipment and documents ---------------------------------------------------------

#: Purpose of Reference of pacs-ai in Contributing Equipment Sequence, CID 7005.
PROCESSING_EQUIPMENT = Code("109102", "DCM", "Processing Equipment")
#: Concept Name of the Encapsulated PDF summary (PS3.3 C.24.2), CID 7020 / 7000.
DIAGNOSTIC_IMAGING_REPORT = Code("18748-4", "LN", "Diagnostic Imaging Report")

# --- Segmentation property categories (CID 7150) -----------------------------------------

ANATOMICAL_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = Code("49755003", "SCT", "Morphologically Abnormal Structure")
TISSUE = Code("85756007", "SCT", "Tissue")

# --- Anatomy used by the built-in models and their tests (CID 7151) ----------------------
# Laterality is not pre-coordinated ("Right lung"): PS3.16 CID 7151 codes the paired organ
# and a modifier; the manifest has no modifier yet, so both lungs are typed "Lung".

LUNG = Code("39607008", "SCT", "Lung")
BRAIN = Code("12738006", "SCT", "Brain")

# --- Segmentation algorithm families (CID 7162) ------------------------------------------

ARTIFICIAL_INTELLIGENCE = Code("123110", "DCM", "Artificial Intelligence")
HISTOGRAM_ANALYSIS = Code("123105", "DCM", "Histogram Analysis")
MORPHOLOGICAL_OPERATIONS = Code("123104", "DCM", "Morphological Operations")

#: The CID 7162 families a manifest may name, by code value.
ALGORITHM_FAMILIES = MappingProxyType(
    {
        code.value: code
        for code in (ARTIFICIAL_INTELLIGENCE, HISTOGRAM_ANALYSIS, MORPHOLOGICAL_OPERATIONS)
    }
)


def code_from_spec(spec: CodeSpec) -> Code:
    """Return the pydicom :class:`Code` for a manifest :class:`CodeSpec` (PS3.3 8.8)."""
    return Code(value=spec.value, scheme_designator=spec.scheme, meaning=spec.meaning)


#: Every constant above, for the tests that check them against PS3.16.
ALL_CODES: tuple[Code, ...] = (
    IMAGING_MEASUREMENT_REPORT,
    IMAGING_PROCEDURE,
    SOURCE,
    VOLUME,
    MILLILITER,
    SUM_OF_SEGMENTED_VOXELS,
    ATTENUATION_COEFFICIENT,
    HOUNSFIELD_UNIT,
    MEAN,
    MAXIMUM,
    AREA,
    SQUARE_MILLIMETER,
    PIXELS,
    PRESENT,
    ABSENT,
    PROBABILITY,
    NO_UNITS,
    QUALITATIVE_EVALUATIONS,
    QUALITY_CONTROL,
    VALUE_OUT_OF_RANGE,
    COMMENT,
    PROCESSING_EQUIPMENT,
    DIAGNOSTIC_IMAGING_REPORT,
    ANATOMICAL_STRUCTURE,
    MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
    TISSUE,
    LUNG,
    BRAIN,
    ARTIFICIAL_INTELLIGENCE,
    HISTOGRAM_ANALYSIS,
    MORPHOLOGICAL_OPERATIONS,
)
