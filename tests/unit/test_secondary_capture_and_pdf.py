"""Secondary Capture images with burned-in outlines, and the Encapsulated PDF summary."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pypdf
import pytest
from pydicom.uid import EncapsulatedPDFStorage, SecondaryCaptureImageStorage

from inference.uids import derive_uid
from inference.volume import Volume
from inference.writers import save_dataset
from inference.writers.contours import rim
from inference.writers.findings import segment_findings
from inference.writers.identity import ResultIdentity
from inference.writers.pdf import build_encapsulated_pdf, summary_pdf
from inference.writers.sc import (
    WARNING,
    WARNING_COLOR,
    build_sc_images,
    choose_slices,
    render_slice,
    window_of,
)
from tests.support.small_ct import COLUMNS, ROWS, SLICES, TWO_LUNGS, lung_labels, small_ct

#: The identity of the PDF summary: the run it names and the object it is.
RAN = ResultIdentity(
    sop_instance_uid=str(derive_uid("pdf")),
    series_instance_uid=str(derive_uid("pdf series")),
    series_number=904,
    backend="torch",
    precision="fp32",
)


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Volume:
    return small_ct(tmp_path_factory.mktemp("ct"))


def test_each_image_shows_the_outlines_in_the_segment_colours_where_the_mask_is(
    volume: Volume, tmp_path: Path
) -> None:
    labels = lung_labels()
    findings = segment_findings(volume, labels, TWO_LUNGS)
    images = build_sc_images(
        volume,
        labels,
        findings,
        TWO_LUNGS,
        identity=lambda index: ResultIdentity(
            series_instance_uid=str(derive_uid("sc series")),
            series_number=903,
            sop_instance_uid=str(derive_uid("sc", str(index))),
            instance_number=index + 1,
        ),
    )

    assert [index for index, _ in images] == [1, 2, 3, 4]  # the slices with a finding
    index, image = images[1]
    reread = pydicom.dcmread(save_dataset(image, tmp_path / "sc.dcm"))
    rendered = render_slice(
        volume, labels, findings, TWO_LUNGS, index=index, window=window_of(volume), caption="x"
    )
    scale = rendered.scale
    assert scale * COLUMNS >= 512
    assert reread.Rows > rendered.top + ROWS * scale and reread.Columns == COLUMNS * scale
    pixels = reread.pixel_array[rendered.top : rendered.top + ROWS * scale]
    for label in TWO_LUNGS.labels:
        mask = np.kron(labels[index] == label.value, np.ones((scale, scale), dtype=bool))
        edge = rim(mask, width=scale)
        assert (pixels[edge] == label.color).all()
        # Inside the rim the image is untouched: grey.
        inside = mask & ~edge
        assert inside.any() and (pixels[inside][:, 0] == pixels[inside][:, 1]).all()
    # The warning banner, in red, above the image.
    banner = reread.pixel_array[: rendered.top]
    assert (banner == WARNING_COLOR).all(axis=-1).sum() > 100
    assert reread.SOPClassUID == SecondaryCaptureImageStorage
    assert reread.BurnedInAnnotation == "YES"
    assert reread.ImageComments.startswith(WARNING)
    assert reread.InstanceNumber == index + 1
    assert [float(v) for v in reread.PixelSpacing] == pytest.approx([0.8 / scale, 0.6 / scale])
    source = reread.SourceImageSequence[0]
    assert source.ReferencedSOPInstanceUID == volume.source_headers[index].SOPInstanceUID
    assert reread.SeriesDescription == "AI test-lungs overlay of 3"
    assert any(e.Manufacturer == "pacs-ai" for e in reread.ContributingEquipmentSequence)


def test_the_slices_are_thinned_evenly_keeping_each_findings_key_slice(volume: Volume) -> None:
    labels = np.zeros((SLICES, ROWS, COLUMNS), dtype=np.uint8)
    labels[:, 2:4, 2:4] = 1
    labels[4, 2:6, 2:6] = 1  # the key slice
    findings = segment_findings(volume, labels, TWO_LUNGS)

    assert choose_slices(findings, SLICES, max_images=0) == list(range(SLICES))
    chosen = choose_slices(findings, SLICES, max_images=2)
    assert len(chosen) == 2 and 4 in chosen
    assert choose_slices(segment_findings(volume, labels * 0, TWO_LUNGS), SLICES, 8) == [3]


def test_with_fewer_images_than_findings_the_largest_findings_key_slices_are_kept(
    volume: Volume,
) -> None:
    labels = np.zeros((SLICES, ROWS, COLUMNS), dtype=np.uint8)
    labels[1, 2:4, 2:4] = 1  # a small finding, key slice 1
    labels[5, 1:7, 1:7] = 2  # a larger one, key slice 5
    findings = segment_findings(volume, labels, TWO_LUNGS)

    assert choose_slices(findings, SLICES, max_images=1) == [5]
    assert choose_slices(findings, SLICES, max_images=2) == [1, 5]


def test_the_pdf_summary_reads_back_with_the_warning_and_every_finding(volume: Volume) -> None:
    labels = lung_labels()
    findings = segment_findings(volume, labels, TWO_LUNGS)

    document = summary_pdf(volume, TWO_LUNGS, identity=RAN, findings=findings, key_image=None)

    reader = pypdf.PdfReader(io.BytesIO(document), strict=True)
    (page,) = reader.pages
    text = page.extract_text()
    assert WARNING in text
    assert "Test Lungs" in text and "test-lungs version 2.1" in text
    for finding in findings:
        assert f"{finding.label.name} yes {finding.volume_ml:.1f}" in text
        assert finding.mean is not None and f"{finding.mean:.0f}" in text
    assert f"Total of all findings {sum(f.volume_ml for f in findings):.1f}" in text
    # The same result gives the same bytes (no timestamps in the document).
    assert document == summary_pdf(volume, TWO_LUNGS, identity=RAN, findings=findings)


def test_the_pdf_is_encapsulated_in_the_studys_document_series(
    volume: Volume, tmp_path: Path
) -> None:
    findings = segment_findings(volume, lung_labels(), TWO_LUNGS)
    key = np.zeros((20, 30, 3), dtype=np.uint8)
    document = summary_pdf(volume, TWO_LUNGS, identity=RAN, findings=findings, key_image=key)

    dataset = build_encapsulated_pdf(
        volume, TWO_LUNGS, document, identity=RAN, referenced_slices=[2]
    )
    reread = pydicom.dcmread(save_dataset(dataset, tmp_path / "pdf.dcm"))

    assert reread.SOPClassUID == EncapsulatedPDFStorage
    assert reread.Modality == "DOC"
    assert reread.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert reread.EncapsulatedDocument[: reread.EncapsulatedDocumentLength] == document
    assert reread.DocumentTitle == "AI result summary: Test Lungs 2.1"
    assert reread.StudyInstanceUID == volume.study_instance_uid
    assert reread.PatientID == volume.source_headers[0].PatientID
    (source,) = reread.SourceInstanceSequence
    assert source.ReferencedSOPInstanceUID == volume.source_headers[2].SOPInstanceUID
    assert reread.SeriesDescription == "AI test-lungs summary of 3"
    assert any(e.Manufacturer == "pacs-ai" for e in reread.ContributingEquipmentSequence)
