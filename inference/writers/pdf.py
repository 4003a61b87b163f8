"""A one-page PDF summary of a result, as an Encapsulated PDF object (PS3.3 A.45.1).

For destinations that show documents but neither SEG nor SR (a RIS, an archive viewer):
the warning that the result is not for diagnosis, the model (name, version, family,
backend and precision), the source series, a table of findings (segmentation: volume,
mean and maximum intensity where quantitative, key slice, and the total volume;
classification: result and probability against its threshold) and, for a segmentation,
the key image of the largest finding with its outline burned in.

The PDF is written here (PDF 1.4, ISO 32000-1): one A4 page, the standard Helvetica
fonts (never embedded; text in WinAnsiEncoding, other characters become ``?``) and the
key image as a JPEG (DCT) XObject. No timestamps are embedded, so the same result gives
the same bytes. No patient data is printed: viewers show it from the DICOM header.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import EncapsulatedPDFStorage, ExplicitVRLittleEndian

from core.errors import InvalidInputError
from inference import codes
from inference.volume import Volume
from inference.writers import (
    MANUFACTURER,
    STAGE,
    device_observer_uid,
    pacs_ai_version,
    processing_equipment,
    series_description,
    software_versions,
    strict_writing,
    writable_source,
)
from inference.writers.findings import SegmentFinding, finding_size, size_unit
from inference.writers.identity import ResultIdentity
from inference.writers.sc import WARNING
from models.manifest import ModelManifest

if TYPE_CHECKING:
    from inference.pipeline import ClassResult

_PAGE_WIDTH, _PAGE_HEIGHT = 595.0, 842.0  # A4 in points
_MARGIN = 50.0
_RED = (0.85, 0.1, 0.1)
_BLACK = (0.0, 0.0, 0.0)
_GREY = (0.35, 0.35, 0.35)


@dataclass(frozen=True)
class _Text:
    x: float
    y: float
    text: str
    size: float = 10.0
    bold: bool = False
    color: tuple[float, float, float] = _BLACK


def _unit_text(unit: Code) -> str:
    """How a unit is printed: HU for Hounsfield units, else its UCUM code."""
    return "HU" if unit == codes.HOUNSFIELD_UNIT else unit.value


def _pdf_string(text: str) -> bytes:
    """A PDF literal string in WinAnsiEncoding (ISO 32000-1 7.3.4.2, D.2)."""
    encoded = text.encode("cp1252", errors="replace")
    escaped = encoded.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)")
    return b"(" + escaped + b")"


def _content(
    texts: Sequence[_Text],
    lines: Sequence[tuple[float, float, float, float]],
    image: tuple[float, float, float, float] | None,
) -> bytes:
    ops: list[bytes] = []
    for x0, y0, x1, y1 in lines:
        ops.append(f"0.6 G 0.5 w {x0:.1f} {y0:.1f} m {x1:.1f} {y1:.1f} l S".encode())
    if image is not None:
        x, y, width, height = image
        ops.append(f"q {width:.2f} 0 0 {height:.2f} {x:.2f} {y:.2f} cm /Im1 Do Q".encode())
    for item in texts:
        r, g, b = item.color
        font = "/F2" if item.bold else "/F1"
        ops.append(
            f"BT {r:.2f} {g:.2f} {b:.2f} rg {font} {item.size:.1f} Tf "
            f"{item.x:.1f} {item.y:.1f} Td ".encode()
            + _pdf_string(item.text)
            + b" Tj ET"
        )
    return b"\n".join(ops)


def _document(content: bytes, jpeg: tuple[bytes, int, int] | None) -> bytes:
    """Assemble a one-page PDF: catalog, pages, page, fonts, content, optional image."""
    objects: list[bytes] = []

    def add(body: bytes) -> int:
        objects.append(body)
        return len(objects)

    def stream(dictionary: bytes, data: bytes) -> bytes:
        return (
            b"<< "
            + dictionary
            + f" /Length {len(data)} >>\nstream\n".encode()
            + data
            + b"\nendstream"
        )

    catalog = add(b"")  # filled in below, once the pages object has a number
    pages = add(b"")
    regular = add(
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
    )
    bold = add(
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold /Encoding /WinAnsiEncoding >>"
    )
    contents = add(stream(b"", content))
    xobjects = b""
    if jpeg is not None:
        data, width, height = jpeg
        picture = add(
            stream(
                f"/Type /XObject /Subtype /Image /Width {width} /Height {height} "
                "/ColorSpace /DeviceRGB /BitsPerComponent 8 /Filter /DCTDecode".encode(),
                data,
            )
        )
        xobjects = f" /XObject << /Im1 {picture} 0 R >>".encode()
    page = add(
        f"<< /Type /Page /Parent {pages} 0 R /MediaBox [0 0 {_PAGE_WIDTH:.0f} "
        f"{_PAGE_HEIGHT:.0f}] /Contents {contents} 0 R /Resources << /Font << /F1 "
        f"{regular} 0 R /F2 {bold} 0 R >>".encode()
        + xobjects
        + b" >> >>"
    )
    objects[catalog - 1] = f"<< /Type /Catalog /Pages {pages} 0 R >>".encode()
    objects[pages - 1] = f"<< /Type /Pages /Kids [{page} 0 R] /Count 1 >>".encode()
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(f"{number} 0 obj\n".encode() + body + b"\nendobj\n")
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    for offset in offsets:
        out.write(f"{offset:010d} 00000 n \n".encode())
    out.write(
        f"trailer\n<< /Size {len(objects) + 1} /Root {catalog} 0 R >>\n"
        f"startxref\n{xref}\n%%EOF\n".encode()
    )
    return out.getvalue()


def _table(
    rows: Sequence[Sequence[str]], columns: Sequence[float], top: float
) -> tuple[list[_Text], list[tuple[float, float, float, float]], float]:
    """Rows of cells at x positions ``columns``, the first row bold; returns the bottom."""
    texts: list[_Text] = []
    lines: list[tuple[float, float, float, float]] = []
    y = top
    for number, row in enumerate(rows):
        for x, cell in zip(columns, row, strict=True):
            texts.append(_Text(x, y, cell, size=9.5, bold=number == 0))
        lines.append((_MARGIN, y - 4, _PAGE_WIDTH - _MARGIN, y - 4))
        y -= 16
    return texts, lines, y


def summary_pdf(
    volume: Volume,
    manifest: ModelManifest,
    *,
    identity: ResultIdentity,
    findings: Sequence[SegmentFinding] = (),
    classes: Sequence[ClassResult] = (),
    key_image: npt.NDArray[np.uint8] | None = None,
) -> bytes:
    """The PDF bytes of the summary page (see the module): ``identity`` gives the backend
    and precision the model ran with."""
    source = volume.source_headers[0]
    texts = [
        _Text(_MARGIN, 790, WARNING, size=18, bold=True, color=_RED),
        _Text(
            _MARGIN,
            770,
            "This is the output of an automated algorithm. It must be reviewed by a "
            "qualified reader.",
            size=9.5,
            color=_GREY,
        ),
        _Text(_MARGIN, 740, f"AI result summary: {manifest.name}", size=14, bold=True),
    ]
    facts = [
        ("Model", f"{manifest.id} version {manifest.version}"),
        ("Algorithm family", manifest.family.meaning),
        ("Ran on", f"{identity.backend} ({identity.precision}), pacs-ai {pacs_ai_version()}"),
        (
            "Source series",
            f"{volume.modality}, {volume.shape[0]} images, series "
            f"{source.get('SeriesNumber', '')} {source.get('SeriesDescription', '')}".rstrip(),
        ),
        ("Study date", str(source.get("StudyDate", "") or "unknown")),
    ]
    y = 718.0
    for label, value in facts:
        texts.append(_Text(_MARGIN, y, label, size=9.5, bold=True))
        texts.append(_Text(_MARGIN + 110, y, value[:90], size=9.5))
        y -= 14
    y -= 12
    if findings:
        unit = next((_unit_text(f.unit) for f in findings if f.unit is not None), None)
        size = "Volume" if volume.projection is None else "Area"
        header = [
            "Finding",
            "Found",
            f"{size} ({size_unit(volume)})",
            "Mean",
            "Maximum",
            "Key slice",
        ]
        if unit is not None:
            header[3:5] = [f"Mean ({unit})", f"Max ({unit})"]
        rows = [header]
        for finding in findings:
            rows.append(
                [
                    finding.label.name[:28],
                    "yes" if finding.present else "no",
                    f"{finding_size(volume, finding):.1f}",
                    "-" if finding.mean is None else f"{finding.mean:.0f}",
                    "-" if finding.maximum is None else f"{finding.maximum:.0f}",
                    "-"
                    if finding.key_slice is None
                    else f"{finding.key_slice.index + 1} of {volume.shape[0]}",
                ]
            )
        total = sum(finding_size(volume, f) for f in findings)
        rows.append(["Total of all findings", "", f"{total:.1f}", "", "", ""])
        table = _table(rows, [_MARGIN, 200, 250, 320, 390, 460], y)
    else:
        rows = [["Finding", "Result", "Probability", "Threshold"]]
        for result in classes:
            rows.append(
                [
                    result.spec.name[:40],
                    "present" if result.present else "absent",
                    f"{result.probability:.3f}",
                    f"{result.spec.threshold:.2f}",
                ]
            )
        table = _table(rows, [_MARGIN, 260, 350, 440], y)
    texts.extend(table[0])
    lines = table[1]
    y = table[2] - 10
    image_box = None
    jpeg = None
    if key_image is not None:
        height_px, width_px = key_image.shape[:2]
        width = min(300.0, _PAGE_WIDTH - 2 * _MARGIN)
        height = width * height_px / width_px
        image_box = (_MARGIN, y - height, width, height)
        buffer = io.BytesIO()
        Image.fromarray(key_image, mode="RGB").save(buffer, format="JPEG", quality=90)
        jpeg = (buffer.getvalue(), width_px, height_px)
        texts.append(_Text(_MARGIN + width + 12, y - 12, "Key image of the largest finding,", 9))
        texts.append(_Text(_MARGIN + width + 12, y - 24, "outlines burned in.", 9))
    texts.append(
        _Text(
            _MARGIN,
            30,
            f"pacs-ai {pacs_ai_version()}. {WARNING}: to be confirmed by a qualified reader.",
            size=7.5,
            color=_GREY,
        )
    )
    return _document(_content(texts, lines, image_box), jpeg)


def build_encapsulated_pdf(
    volume: Volume,
    manifest: ModelManifest,
    document: bytes,
    *,
    identity: ResultIdentity,
    referenced_slices: Sequence[int] = (),
) -> Dataset:
    """Wrap ``document`` (PDF bytes) in an Encapsulated PDF object of the source's study.

    Implements PS3.3 A.45.1 (Encapsulated PDF IOD): Patient, General Study, Encapsulated
    Document Series (Modality DOC), General Equipment, SC Equipment, Encapsulated
    Document and SOP Common modules. ``referenced_slices`` are the source slices whose
    images the document shows (Source Instance Sequence). ``identity`` names the object;
    its description (the Series Description) defaults to
    :func:`~inference.writers.series_description`'s, its Device Serial Number to the
    model's Device Observer UID. Patient
    and Study attributes come from a :func:`writable_source` copy of the first source
    header.

    Raises:
        InvalidInputError: (``stage="write"``) a value copied from the source does not
            conform (writing validation RAISE).
    """
    source = writable_source(volume.source_headers[0])
    with strict_writing():
        try:
            dataset = hd.base.SOPClass(
                study_instance_uid=source.StudyInstanceUID,
                series_instance_uid=identity.series_instance_uid,
                series_number=identity.series_number,
                sop_instance_uid=identity.sop_instance_uid,
                sop_class_uid=EncapsulatedPDFStorage,
                instance_number=identity.instance_number,
                modality="DOC",
                manufacturer=MANUFACTURER,
                transfer_syntax_uid=ExplicitVRLittleEndian,
                patient_id=source.get("PatientID"),
                patient_name=source.get("PatientName"),
                patient_birth_date=source.get("PatientBirthDate"),
                patient_sex=source.get("PatientSex"),
                accession_number=source.get("AccessionNumber"),
                study_id=source.get("StudyID"),
                study_date=source.get("StudyDate"),
                study_time=source.get("StudyTime"),
                referring_physician_name=source.get("ReferringPhysicianName"),
                series_description=identity.description
                or series_description(manifest, "pdf", source),
                manufacturer_model_name=manifest.name,
                software_versions=list(software_versions(manifest)),  # type: ignore[arg-type]
                device_serial_number=identity.device_serial_number
                or str(device_observer_uid(manifest)),
                specific_character_set=source.get("SpecificCharacterSet"),
            )
        except ValueError as exc:
            raise InvalidInputError(f"cannot encode the PDF summary: {exc}", stage=STAGE) from exc
        dataset.copy_patient_and_study_information(source)
        equipment: list[hd.ContributingEquipment] = []
        # As highdicom does for the SEG and SR: the scanner, when the source names it.
        with contextlib.suppress(AttributeError, ValueError):
            equipment.append(hd.ContributingEquipment.for_image_acquisition(source))
        equipment.append(processing_equipment(manifest))
        dataset.ContributingEquipmentSequence = equipment
        dataset.ConversionType = "WSD"
        dataset.BurnedInAnnotation = "YES"
        dataset.DocumentTitle = f"AI result summary: {manifest.name} {manifest.version}"[:1024]
        dataset.ConceptNameCodeSequence = [
            hd.sr.CodedConcept.from_code(codes.DIAGNOSTIC_IMAGING_REPORT)
        ]
        dataset.AcquisitionDateTime = None
        dataset.VerificationFlag = "UNVERIFIED"
        if referenced_slices:
            references = []
            # A multi-frame source once (this sequence references instances, not frames).
            indices = {volume.slice_source(index) for index in referenced_slices}
            for header_index in sorted({i.header_index for i in indices if i is not None}):
                header = volume.source_headers[header_index]
                item = Dataset()
                item.ReferencedSOPClassUID = header.SOPClassUID
                item.ReferencedSOPInstanceUID = header.SOPInstanceUID
                references.append(item)
            dataset.SourceInstanceSequence = references
        dataset.MIMETypeOfEncapsulatedDocument = "application/pdf"
        dataset.EncapsulatedDocumentLength = len(document)
        dataset.EncapsulatedDocument = document + (b"\x00" if len(document) % 2 else b"")
    return dataset
