"""Headers of a whole-body PET, for refusals a head model makes from the headers alone."""

from __future__ import annotations

from pathlib import Path

from pydicom.uid import PositronEmissionTomographyImageStorage, generate_uid

from tests.conftest import DicomFactory

#: Across (x and y) and along (z) the body, in mm.
ACROSS_MM = 700.0
ALONG_MM = 1800.0


def whole_body_pet(folder: Path) -> list[Path]:
    """40 PET slices of 16 x 16 pixels, 43.75 mm each (700 mm across), 45 mm apart
    (1800 mm from feet to head); the pixels are tiny, the headers say whole body."""
    factory = DicomFactory(folder)
    series, study = generate_uid(), generate_uid()
    paths = []
    for number in range(1, 41):
        ds = factory.dataset(
            modality="MR",
            size=16,
            series_uid=series,
            study_uid=study,
            instance_number=number,
            sop_class_uid=PositronEmissionTomographyImageStorage,
        )
        for keyword in (
            "ScanningSequence",
            "SequenceVariant",
            "ScanOptions",
            "MRAcquisitionType",
            "RepetitionTime",
            "EchoTime",
            "EchoTrainLength",
        ):
            delattr(ds, keyword)
        ds.Modality = "PT"
        ds.BodyPartExamined = "WHOLEBODY"
        ds.PixelSpacing = [43.75, 43.75]
        ds.ImagePositionPatient = [-350.0, -350.0, -1800.0 + 45.0 * number]
        paths.append(factory.save(ds))
    return paths
