"""Findings and measurements as a TID 1500 Measurement Report (Comprehensive 3D SR).

Content (PS3.16 TID 1500), built with highdicom:

* observation context: a *device* observer (TID 1004): pacs-ai running the model, with a
  Device Observer UID derived from the model id and version;
* an Image Library (TID 1600) listing the source images, with the descriptors they share
  said once per group (:mod:`inference.writers.image_library`);
* per label the model found, two measurement groups sharing its tracking identifier and
  tracking UID (TID 4108; the SEG segment's, derived deterministically):

  - a **TID 1411 Volumetric ROI** group: finding category and finding (the segment's
    category and type), finding site (the type, for anatomical structures), the
    Referenced Segment in the SEG with the source series, the Volume in ml (voxel count
    x voxel volume, *sum of segmented voxels*), for CT the mean and maximum attenuation
    in HU, and the qualitative evaluation *Present*;
  - a **TID 1410 Planar ROI** group on the segment's key slice (where it is largest):
    the outline of its largest region there as a closed SCOORD polyline on that source
    image, and the area inside it in mm2.

  Without a SEG (a destination whose profile has ``seg: none``) the first group is a
  TID 1501 group instead, whose evidence is the slices the segment is on;
* a report-level **Qualitative Evaluations** container (TID 1500 row 12) saying for every
  label whether it was found (*Present* / *Absent*); for a result outside its model's
  expectations, delivered flagged (:mod:`inference.plausibility`), also *Quality Control*
  = *Value out of range* and a *Comment* per value saying what was out of range.

Why two groups and no group without coordinates: viewers show an SR's measurements on
the image they are drawn on. OHIF (3.13) merges groups that share a tracking UID, lists
them with the outline of the planar group, and fails to load *any* measurement of a
report in which one group has no spatial coordinates at all. So a label the model did
not find has no measurement group (it is reported *Absent* in the qualitative
evaluations), and there is no TID 1501 total of all segments (earlier versions wrote one;
each volume is listed, and the sum is in the PDF). Only when nothing at all was found,
every label keeps a TID 1411 group with 0 ml and *Absent* (TID 1500 needs a group).

Classification models (:func:`build_classification_sr`) get one TID 1501 group per class
instead: the finding, a Present/Absent qualitative evaluation at the class's threshold and
the class Probability, referencing the source images; there is no SEG.

On a projection radiograph (:mod:`inference.projection`) a volume means nothing: the
TID 1411 group becomes a TID 1410 Planar ROI group referencing the segment in the SEG,
and every group reports the segment's **area** (mm2, or pixels for a film without pixel
spacing, with a Comment in the qualitative evaluations saying so).

Every group carries the TID 4019 algorithm identification: model name, version, family,
and the inference backend and precision as one Algorithm Parameters item
(``backend=tensorrt,precision=fp16``, the text the SEG's Algorithm Parameters carry too).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as pydicom_codes

from core.errors import InvalidInputError
from inference import codes
from inference.codes import code_from_spec
from inference.volume import Volume
from inference.writers import (
    MANUFACTURER,
    STAGE,
    algorithm_parameters,
    device_observer_uid,
    frame_numbers_of,
    library_images,
    ordered_labels,
    processing_equipment,
    series_description,
    software_versions,
    strict_writing,
    tracked_source_uid,
    tracking_identifier,
    tracking_uid,
    writable_source,
)
from inference.writers.findings import SegmentFinding, round_value, segment_findings
from inference.writers.identity import ResultIdentity
from inference.writers.image_library import image_library
from models.manifest import CodeSpec, ModelManifest

if TYPE_CHECKING:
    from inference.pipeline import ClassResult

logger = logging.getLogger(__name__)

#: Longest value of a TEXT content item (UT would allow more; viewers show a line).
_UT_MAX = 1024

_Group = (
    hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    | hd.sr.MeasurementsAndQualitativeEvaluations
)


def _is_anatomy(category: CodeSpec) -> bool:
    return (category.scheme, category.value) == (
        codes.ANATOMICAL_STRUCTURE.scheme_designator,
        codes.ANATOMICAL_STRUCTURE.value,
    )


def _check_seg_matches(seg: hd.seg.Segmentation, manifest: ModelManifest, volume: Volume) -> None:
    expected = [label.name for label in ordered_labels(manifest)]
    # A LABELMAP also describes segment 0, its background (highdicom adds it).
    found = [str(item.SegmentLabel) for item in seg.SegmentSequence if item.SegmentNumber != 0]
    if found != expected:
        raise ValueError(
            f"the SEG's segments {found} are not those of model {manifest.id} "
            f"{manifest.version} {expected}; pass the SEG built for this manifest"
        )
    series = {str(item.SeriesInstanceUID) for item in seg.ReferencedSeriesSequence}
    if series != {volume.series_instance_uid}:
        raise ValueError(
            f"the SEG references series {sorted(series)}, not the volume's "
            f"{volume.series_instance_uid}"
        )


def _area(volume: Volume, value: float) -> hd.sr.Measurement:
    """An Area in mm2, or in pixels on a radiograph without pixel spacing."""
    calibrated = volume.projection is None or volume.projection.calibrated
    unit = codes.SQUARE_MILLIMETER if calibrated else codes.PIXELS
    return hd.sr.Measurement(name=codes.AREA, value=value, unit=unit)


def _measurements(finding: SegmentFinding, volume: Volume) -> list[hd.sr.Measurement]:
    """TID 1419 / TID 300 measurements of a segment: volume, and mean / max intensity;
    on a projection radiograph its area (a volume has no meaning there)."""
    if volume.projection is not None:
        pixel_area = volume.spacing[0] * volume.spacing[1]
        return [_area(volume, round_value(finding.voxels * pixel_area))]
    measurements = [
        hd.sr.Measurement(
            name=codes.VOLUME,
            value=finding.volume_ml,
            unit=codes.MILLILITER,
            method=codes.SUM_OF_SEGMENTED_VOXELS,
        )
    ]
    if finding.unit is not None and finding.mean is not None and finding.maximum is not None:
        for derivation, value in ((codes.MEAN, finding.mean), (codes.MAXIMUM, finding.maximum)):
            measurements.append(
                hd.sr.Measurement(
                    name=codes.ATTENUATION_COEFFICIENT,
                    value=value,
                    unit=finding.unit,
                    derivation=derivation,
                )
            )
    return measurements


def _tracking(
    volume: Volume, manifest: ModelManifest, finding: SegmentFinding
) -> hd.sr.TrackingIdentifier:
    return hd.sr.TrackingIdentifier(
        uid=tracking_uid(tracked_source_uid(volume), manifest, f"label-{finding.label.value}"),
        identifier=tracking_identifier(finding.label),
    )


def _presence(finding: SegmentFinding) -> hd.sr.QualitativeEvaluation:
    return hd.sr.QualitativeEvaluation(
        name=code_from_spec(finding.label.type),
        value=codes.PRESENT if finding.present else codes.ABSENT,
    )


def _sites(finding: SegmentFinding) -> list[hd.sr.FindingSite] | None:
    if not _is_anatomy(finding.label.category):
        return None
    return [hd.sr.FindingSite(code_from_spec(finding.label.type))]


def _volumetric_group(
    seg: hd.seg.Segmentation,
    volume: Volume,
    manifest: ModelManifest,
    finding: SegmentFinding,
    algorithm: hd.sr.AlgorithmIdentification,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(volume, manifest, finding),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            segment_number=finding.number,
            source_series=hd.sr.SourceSeriesForSegmentation(volume.series_instance_uid),
        ),
        finding_category=code_from_spec(finding.label.category),
        finding_type=code_from_spec(finding.label.type),
        finding_sites=_sites(finding),
        algorithm_id=algorithm,
        measurements=_measurements(finding, volume),
        qualitative_evaluations=[_presence(finding)],
    )


def _segment_frame_group(
    seg: hd.seg.Segmentation,
    volume: Volume,
    manifest: ModelManifest,
    finding: SegmentFinding,
    algorithm: hd.sr.AlgorithmIdentification,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410 for a segment of a SEG on a projection radiograph (one image, so a planar
    ROI, PS3.16 TID 1410 row 8): its frame in the SEG, its area, whether it was found."""
    frames = [
        index
        for index, item in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1)
        if "SegmentIdentificationSequence" in item
        and int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber) == finding.number
    ]
    image = volume.source_headers[0]
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(volume, manifest, finding),
        referenced_segment=hd.sr.ReferencedSegmentationFrame(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            # A LABELMAP has one frame for every segment.
            frame_number=frames[0] if frames else 1,
            segment_number=finding.number,
            source_image=hd.sr.SourceImageForSegmentation(image.SOPClassUID, image.SOPInstanceUID),
        ),
        finding_category=code_from_spec(finding.label.category),
        finding_type=code_from_spec(finding.label.type),
        finding_sites=_sites(finding),
        algorithm_id=algorithm,
        measurements=_measurements(finding, volume),
        qualitative_evaluations=[_presence(finding)],
    )
    # PS3.3 C.18.3 (Image Reference Macro): a reference to a SEG names its segment *or*
    # its frames, not both; highdicom writes both. The segment number says it all.
    for item in group[0].ContentSequence:
        if item.ValueType == "IMAGE" and "ReferencedSegmentNumber" in item.ReferencedSOPSequence[0]:
            del item.ReferencedSOPSequence[0].ReferencedFrameNumber
    return group


def _image_group(
    volume: Volume,
    manifest: ModelManifest,
    finding: SegmentFinding,
    algorithm: hd.sr.AlgorithmIdentification,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 for a destination without the SEG: the images (or frames) the segment is on."""
    headers = volume.source_headers
    images = frame_numbers_of(volume, finding.slices)
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(volume, manifest, finding),
        finding_category=code_from_spec(finding.label.category),
        finding_type=code_from_spec(finding.label.type),
        finding_sites=_sites(finding),
        algorithm_id=algorithm,
        measurements=_measurements(finding, volume),
        qualitative_evaluations=[_presence(finding)],
        source_images=[
            hd.sr.SourceImageForMeasurementGroup.from_source_image(
                headers[index], referenced_frame_numbers=frames or None
            )
            for index, frames in images.items()
        ]
        or None,
    )


def _planar_group(
    volume: Volume,
    manifest: ModelManifest,
    finding: SegmentFinding,
    algorithm: hd.sr.AlgorithmIdentification,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations | None:
    key = finding.key_slice
    if key is None:
        return None
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(volume, manifest, finding),
        referenced_region=hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=key.outline,
            source_image=_source_for_region(volume, key.index),
        ),
        finding_category=code_from_spec(finding.label.category),
        finding_type=code_from_spec(finding.label.type),
        finding_sites=_sites(finding),
        algorithm_id=algorithm,
        measurements=[_area(volume, key.area_mm2)],
    )


def _source_for_region(volume: Volume, z: int) -> hd.sr.SourceImageForRegion:
    """The source image (and frame, PS3.3 C.17.3.2.1 Referenced Frame Number) of slice
    ``z``, which must have been read from a source (a key slice is never interpolated)."""
    source = volume.slice_source(z)
    if source is None:
        raise ValueError(f"slice {z} was interpolated: it has no source image to draw on")
    return hd.sr.SourceImageForRegion.from_source_image(
        volume.source_headers[source.header_index],
        referenced_frame_numbers=None if source.frame_number is None else [source.frame_number],
    )


def _interpolated_comment(volume: Volume) -> hd.sr.TextContentItem | None:
    """A Comment (TID 1500 row 14) naming the slices interpolated over missing slices."""
    missing = volume.interpolated_slices
    if not missing:
        return None
    positions = [
        "(" + ", ".join(f"{v:.2f}" for v in (volume.affine @ [0.0, 0.0, z, 1.0])[:3]) + ")"
        for z in missing
    ]
    text = (
        f"{len(missing)} missing slice(s) of the source series were interpolated linearly "
        "between their neighbours before the model ran, at Image Position (Patient) "
        f"{', '.join(positions)} mm (slice index {', '.join(str(z + 1) for z in missing)} "
        f"of {volume.shape[0]}); the segmentation has no frame there"
    )
    return hd.sr.TextContentItem(
        name=codes.COMMENT,
        value=text[:_UT_MAX],
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )


def _evaluations(
    volume: Volume, findings: Sequence[SegmentFinding], implausible: Sequence[str]
) -> hd.sr.ContainerContentItem | None:
    """The report's Qualitative Evaluations with the interpolation comment, if any; ``None``
    when there is nothing to say (no findings, nothing implausible or interpolated)."""
    comments = [c for c in (_interpolated_comment(volume), _pixels_comment(volume)) if c]
    if not findings and not implausible and not comments:
        return None
    container = _qualitative_evaluations(findings, implausible)
    container.ContentSequence.extend(comments)
    return container


def _pixels_comment(volume: Volume) -> hd.sr.TextContentItem | None:
    """A Comment saying that the areas are in pixels (a radiograph without spacing)."""
    if volume.projection is None or volume.projection.calibrated:
        return None
    return hd.sr.TextContentItem(
        name=codes.COMMENT,
        value=(
            "The radiograph has no usable pixel spacing (Pixel Spacing and Imager Pixel "
            "Spacing absent or 0): areas are in pixels, not mm2"
        ),
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )


def _qualitative_evaluations(
    findings: Sequence[SegmentFinding], implausible: Sequence[str] = ()
) -> hd.sr.ContainerContentItem:
    """TID 1500 rows 12-14: whether each label was found, for the report as a whole; and
    for a result outside its model's expectations (``implausible``: what was out of
    range), Quality Control = Value out of range with a Comment per value."""
    container = hd.sr.ContainerContentItem(
        name=codes.QUALITATIVE_EVALUATIONS,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    items: list[hd.sr.CodeContentItem | hd.sr.TextContentItem] = [
        hd.sr.CodeContentItem(
            name=code_from_spec(finding.label.type),
            value=codes.PRESENT if finding.present else codes.ABSENT,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
        for finding in findings
    ]
    if implausible:
        items.append(
            hd.sr.CodeContentItem(
                name=codes.QUALITY_CONTROL,
                value=codes.VALUE_OUT_OF_RANGE,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
        items.extend(
            hd.sr.TextContentItem(
                name=codes.COMMENT,
                value=problem[:_UT_MAX],
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
            for problem in implausible
        )
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def build_sr(
    seg: hd.seg.Segmentation | None,
    volume: Volume,
    labels: npt.NDArray[np.integer],
    manifest: ModelManifest,
    *,
    identity: ResultIdentity,
    findings: Sequence[SegmentFinding] | None = None,
    implausible: Sequence[str] = (),
) -> hd.sr.Comprehensive3DSR:
    """Build the TID 1500 Measurement Report of a segmentation.

    ``seg`` must be the SEG :func:`inference.writers.seg.build_seg` made from the same
    ``volume``, ``labels`` and ``manifest`` (BINARY or LABELMAP, any transfer syntax), or
    ``None`` for a report without one. ``findings`` (:func:`segment_findings`) are
    computed from ``labels`` when not given. ``identity`` names the document and must
    give the backend and precision (the Algorithm Parameters); its description (the
    Series Description) defaults to :func:`~inference.writers.series_description`'s.
    Implements PS3.3 A.35.13
    (Comprehensive 3D SR IOD) with PS3.16 TID 1500 / 1411 / 1410 / 1501 / 1600 / 300 /
    4019 / 4108 / 1004.

    Raises:
        InvalidInputError: (``stage="write"``) the label map holds undeclared values, or
            a value copied from the source does not conform (writing validation RAISE).
        ValueError: ``seg`` was not built for this manifest and volume, or ``identity``
            lacks the backend or precision.

    ``implausible``: what was outside the model's expectations (a result delivered
    flagged, :mod:`inference.plausibility`), added to the report's qualitative
    evaluations as Quality Control = Value out of range and one Comment each.
    """
    if seg is not None:
        _check_seg_matches(seg, manifest, volume)
    if findings is None:
        findings = segment_findings(volume, labels, manifest)
    serial = identity.device_serial_number or str(device_observer_uid(manifest))
    found = [finding for finding in findings if finding.present]
    with strict_writing():
        algorithm, observer = _algorithm_and_observer(manifest, identity, serial)
        groups: list[_Group] = []
        for finding in found or findings:
            if seg is not None and volume.projection is not None:
                groups.append(_segment_frame_group(seg, volume, manifest, finding, algorithm))
            elif seg is not None:
                groups.append(_volumetric_group(seg, volume, manifest, finding, algorithm))
            else:
                groups.append(_image_group(volume, manifest, finding, algorithm))
            planar = _planar_group(volume, manifest, finding, algorithm)
            if planar is not None:
                groups.append(planar)
        report = _measurement_report(groups, observer)
        evaluations = _evaluations(volume, findings, implausible)
        if evaluations is not None:
            report.ContentSequence.append(evaluations)
        sr = _document(
            report,
            volume,
            [*volume.source_headers, *([seg] if seg is not None else [])],
            manifest,
            identity=identity,
            serial=serial,
        )
    logger.info(
        "SR %s: %d of %d label(s) found, %s",
        identity.sop_instance_uid,
        len(found),
        len(findings),
        ", ".join(f"{f.label.name} {f.volume_ml:.1f} ml" for f in found) or "none",
    )
    return sr


def _class_group(
    result: ClassResult,
    volume: Volume,
    manifest: ModelManifest,
    *,
    algorithm: hd.sr.AlgorithmIdentification,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    finding = code_from_spec(result.spec.code)
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=tracking_uid(tracked_source_uid(volume), manifest, f"class-{result.spec.index}"),
            identifier=result.spec.name[:64],
        ),
        finding_type=finding,
        algorithm_id=algorithm,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(
                name=finding, value=codes.PRESENT if result.present else codes.ABSENT
            )
        ],
        measurements=[
            hd.sr.Measurement(
                name=codes.PROBABILITY,
                value=round_value(result.probability),
                unit=codes.NO_UNITS,
                algorithm_id=algorithm,
            )
        ],
        source_images=[
            hd.sr.SourceImageForMeasurementGroup.from_source_image(header)
            for header in volume.source_headers
        ]
        or None,
    )


def build_classification_sr(
    volume: Volume,
    classes: Sequence[ClassResult],
    manifest: ModelManifest,
    *,
    identity: ResultIdentity,
    implausible: Sequence[str] = (),
) -> hd.sr.Comprehensive3DSR:
    """Build the TID 1500 Measurement Report of a classification model's findings.

    One TID 1501 Measurement Group per class: tracking identifier and UID, the finding
    (the class's code), a qualitative evaluation of it (Present / Absent, CID 240/241,
    at the class's threshold), its Probability (DCM 122157, unit "1") and the TID 4019
    algorithm identification with backend and precision; the source images are the
    group's evidence. PS3.3 A.35.13, PS3.16 TID 1500 / 1501 / 4019 / 1004.
    ``implausible`` as for :func:`build_sr`, in a report-level Qualitative Evaluations
    container. ``identity`` as for :func:`build_sr`.

    Raises:
        InvalidInputError: (``stage="write"``) a value copied from the source does not
            conform (writing validation RAISE).
        ValueError: ``identity`` lacks the backend or precision.
    """
    serial = identity.device_serial_number or str(device_observer_uid(manifest))
    with strict_writing():
        algorithm, observer = _algorithm_and_observer(manifest, identity, serial)
        groups = [_class_group(result, volume, manifest, algorithm=algorithm) for result in classes]
        report = _measurement_report(groups, observer)
        # TID 1500 row 12, with only the quality control or comments (rows 13-14).
        evaluations = _evaluations(volume, (), implausible)
        if evaluations is not None:
            report.ContentSequence.append(evaluations)
        sr = _document(
            report, volume, list(volume.source_headers), manifest, identity=identity, serial=serial
        )
    logger.info(
        "SR %s: %s",
        identity.sop_instance_uid,
        ", ".join(f"{r.spec.name} {r.probability:.3f}" for r in classes),
    )
    return sr


def _measurement_report(groups: Sequence[_Group], observer: hd.sr.ObserverContext) -> Dataset:
    """The TID 1500 root container over ``groups``, observed by the model's device (the
    Image Library is added to the document by :func:`_document`)."""
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.IMAGING_PROCEDURE,
        imaging_measurements=groups,
        title=codes.IMAGING_MEASUREMENT_REPORT,
    )
    root: Dataset = report[0]
    return root


def _document(
    report: Dataset,
    volume: Volume,
    evidence: Sequence[Dataset],
    manifest: ModelManifest,
    *,
    identity: ResultIdentity,
    serial: str,
) -> hd.sr.Comprehensive3DSR:
    """``report`` as a Comprehensive 3D SR with pacs-ai's identification (IHE AIR), its
    Image Library (TID 1500 row 4) listing the volume's source images.

    Patient and Study attributes come from a :func:`writable_source` copy of the first
    evidence item (highdicom reads them there).

    highdicom copies the content tree it is given and searches it for the images it
    references; the Image Library, most of a report on a CT (four items an image), is
    added to the document afterwards, right before the Imaging Measurements, as TID 1500
    places it. Every image it lists is evidence already (the source images are), so the
    evidence sequences are those highdicom would have written with it.

    Raises:
        InvalidInputError: a value copied from the source does not conform.
    """
    try:
        sr = hd.sr.Comprehensive3DSR(
            evidence=[writable_source(evidence[0]), *evidence[1:]],
            content=report,
            series_instance_uid=identity.series_instance_uid,
            series_number=identity.series_number,
            sop_instance_uid=identity.sop_instance_uid,
            instance_number=identity.instance_number,
            manufacturer=MANUFACTURER,
            is_complete=True,
            is_final=False,
            is_verified=False,
            series_description=identity.description
            or series_description(manifest, "sr", evidence[0]),
            manufacturer_model_name=manifest.name,
            software_versions=list(software_versions(manifest)),
            device_serial_number=serial,
            contributing_equipment=[processing_equipment(manifest)],
        )
    except ValueError as exc:
        raise InvalidInputError(f"cannot encode the report: {exc}", stage=STAGE) from exc
    images = library_images(volume)
    items = list(sr.ContentSequence)
    library_at = next(
        (index for index, item in enumerate(items) if _is_imaging_measurements(item)), len(items)
    )
    library = image_library([image for image, _ in images], [frame for _, frame in images])
    # A plain sequence: highdicom's accepts its own content item classes only, and the
    # library's entries are plain items (see inference.writers.image_library).
    sr.ContentSequence = [*items[:library_at], library, *items[library_at:]]
    return sr


def _is_imaging_measurements(item: Dataset) -> bool:
    """Whether ``item`` is the Imaging Measurements container (TID 1500 row 6)."""
    name = item.ConceptNameCodeSequence[0]
    code = pydicom_codes.DCM.ImagingMeasurements
    return bool(
        name.CodeValue == code.value and name.CodingSchemeDesignator == code.scheme_designator
    )


def _algorithm_and_observer(
    manifest: ModelManifest, identity: ResultIdentity, serial: str
) -> tuple[hd.sr.AlgorithmIdentification, hd.sr.ObserverContext]:
    """TID 4019 algorithm identification and the device observer (TID 1004) of a model.

    Raises:
        ValueError: ``identity`` lacks the backend or precision.
    """
    if not identity.backend or not identity.precision:
        raise ValueError(
            "a measurement report names the inference backend and precision: give both in "
            "the ResultIdentity"
        )
    algorithm = hd.sr.AlgorithmIdentification(
        name=manifest.name,
        version=manifest.version,
        # One item, not two: dcmqi's reader keeps only the first Algorithm Parameters.
        parameters=[algorithm_parameters(identity.backend, identity.precision)],
        family=code_from_spec(manifest.family),
        manufacturer=MANUFACTURER,
    )
    observer = hd.sr.ObserverContext(
        observer_type=pydicom_codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_observer_uid(manifest),
            name=manifest.name,
            manufacturer_name=MANUFACTURER,
            model_name=manifest.id,
            serial_number=serial,
        ),
    )
    return algorithm, observer
