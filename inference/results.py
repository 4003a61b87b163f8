"""From a series on disk to written result files: the worker's inference step.

``predict_each`` reads the series and runs the model on each of its inputs (the volume,
or each film of a projection radiograph series the model accepts; ``load_and_predict``
when there is one); ``write_results`` writes every result object that the output
profiles of a job's destinations ask for (see :mod:`core.output_profiles`): SEG
(BINARY or LABELMAP, empty frames as configured, compressed where the destination
accepts it), the TID 1500 SR referencing that SEG, Secondary Capture images with the
outlines burned in, an Encapsulated PDF summary. An object several destinations need is
written once. UIDs are derived from (source series,
model id, model version, object kind and variant), so that a re-run writes the very same
objects again and the PACS replaces rather than duplicates them.

The films of a projection series each get their own results (:class:`ResultPlace`): one
result series per kind for the whole job, one object per film in it, numbered 1..N, each
referencing its own film, their SOP Instance UIDs derived also from the film's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from core.output_profiles import DEFAULT_PROFILE, Compression, EmptyFrames, OutputProfile
from inference.pipeline import ModelRunner, Prediction
from inference.plausibility import Plausibility
from inference.projection import choose_projections, load_projection, series_is_projection
from inference.uids import result_uids
from inference.volume import Volume, load_series
from inference.writers import encode_strictly, result_series_number, series_description, store
from inference.writers.findings import SegmentFinding, segment_findings
from inference.writers.identity import ResultIdentity
from inference.writers.pdf import build_encapsulated_pdf, summary_pdf
from inference.writers.sc import build_sc_images, render_slice, window_of
from inference.writers.seg import SegmentationType, build_seg
from inference.writers.sr import build_classification_sr, build_sr
from inference.writers.strict_check import StrictChecker
from models.manifest import ModelManifest

#: The transfer syntax of each compression a profile may name.
COMPRESSION_SYNTAXES: Mapping[Compression, UID] = {
    "rle": RLELossless,
    "jpeg-ls": JPEGLSLossless,
    "jpeg2000": JPEG2000Lossless,
}
#: Which compressions each encoding can be written in (highdicom's encoders; a BINARY
#: SEG has one bit per pixel, which only JPEG 2000 among these takes).
_ENCODABLE: Mapping[str, frozenset[Compression]] = {
    "binary": frozenset({"jpeg2000"}),
    "labelmap": frozenset({"rle", "jpeg-ls", "jpeg2000"}),
    "sc": frozenset({"rle", "jpeg-ls", "jpeg2000"}),
}


@dataclass(frozen=True)
class ResultFile:
    """One written result object."""

    path: Path
    #: ``seg``, ``sr``, ``sc`` or ``pdf``.
    kind: str
    sop_instance_uid: str
    sop_class_uid: str


@dataclass(frozen=True)
class WrittenResults:
    #: Every file written, each once.
    files: tuple[ResultFile, ...]
    #: The files each profile (by the name it was given: a destination) receives.
    deliveries: Mapping[str, tuple[ResultFile, ...]]
    #: The SEG and SR of the first profile that has one ("" when none has).
    seg_sop_instance_uid: str
    sr_sop_instance_uid: str
    #: Volume per label name, and "total" for all labels together, in mL.
    measurements_ml: dict[str, float]
    #: Classification models: probability per class name (empty for segmentation).
    probabilities: dict[str, float] = field(default_factory=dict)


#: Series Description of every object of a result delivered flagged starts with this.
CHECK_PREFIX = "CHECK"
_LO_MAX = 64

#: JPEG 2000 encoders (OpenJPEG) refuse frames smaller than this along both dimensions.
_JPEG2000_MIN_SIZE = 32


def choose_compression(
    encoding: str, accepted: Sequence[Compression], *, rows: int, columns: int
) -> Compression | None:
    """The first of ``accepted`` that ``encoding`` (binary, labelmap, sc) can be written
    in for ``rows`` x ``columns`` frames, or ``None`` (uncompressed)."""
    small = max(rows, columns) < _JPEG2000_MIN_SIZE
    return next(
        (c for c in accepted if c in _ENCODABLE[encoding] and not (c == "jpeg2000" and small)),
        None,
    )


def _syntax(compression: Compression | None) -> UID:
    return ExplicitVRLittleEndian if compression is None else COMPRESSION_SYNTAXES[compression]


def _suffix(compression: Compression | None) -> str:
    return "" if compression is None else f".{compression}"


def _seg_variant(encoding: SegmentationType, empty_frames: EmptyFrames) -> str:
    """UID variant of a SEG: "" for the default (BINARY, one frame per empty segment)."""
    if (encoding, empty_frames) == ("binary", "one-per-segment"):
        return ""
    return f"{encoding}-{empty_frames}"


@dataclass(frozen=True)
class Run:
    """The model's prediction on one input of a job: the series' volume, or one film."""

    volume: Volume
    prediction: Prediction
    #: Seconds per stage, ``decode`` (reading) first.
    timings: dict[str, float]


@dataclass(frozen=True)
class ResultPlace:
    """Where the results of one film go among those of its job (a projection series
    whose films the model runs on one by one).

    The results of every film of a job share one result series per kind (SEG, SR, ...):
    its Series Number and Description come from ``series_source`` (the job's first film;
    default: the film itself), each object's Instance Number is ``instance_number`` (the
    film's place among the job's films, 1..N), and ``flagged`` (some film's result of the
    job is delivered flagged) starts every object's Series Description with ``CHECK``,
    since a series has one description. The default place is that of a job's only input.
    """

    instance_number: int = 1
    series_source: Dataset | None = None
    flagged: bool = False


def _predict(
    runner: ModelRunner,
    volume: Volume,
    *,
    started: float,
    before_predict: Callable[[], object] | None,
) -> Run:
    decode = time.perf_counter() - started
    if before_predict is not None:
        before_predict()
    prediction = runner.predict(volume)
    return Run(volume, prediction, {"decode": decode, **prediction.timings})


def predict_each(
    runner: ModelRunner,
    paths: Sequence[Path],
    *,
    volume: Volume | None = None,
    before_predict: Callable[[], object] | None = None,
) -> tuple[tuple[Run, ...], tuple[str, ...]]:
    """Read the series (unless ``volume`` was read ahead) and run the model on each input.

    A volume series is one input. A projection radiograph series has one input per film
    the model accepts (:func:`~inference.projection.choose_projections`, in Instance
    Number order), each read by :func:`~inference.projection.load_projection` and run in
    turn. Returns the runs and notes on the series (the films left out and why).

    ``before_predict`` runs once, between reading and the first inference (the worker
    starts reading the next series there). The timings include ``decode`` (0 for a
    volume read ahead).

    Raises:
        InvalidInputError: the series is not a usable volume, no film of it is one the
            model accepts, or the model refuses an input.
    """
    started = time.perf_counter()
    if volume is None and series_is_projection(paths):
        films, notes = choose_projections(paths, runner.manifest.accepts)
        runs: list[Run] = []
        for film in films:
            runs.append(
                _predict(
                    runner,
                    load_projection([film]),
                    started=started,
                    before_predict=None if runs else before_predict,
                )
            )
            started = time.perf_counter()
        return tuple(runs), notes
    if volume is None:
        volume = load_series(paths, max_missing=runner.manifest.max_missing_slices)
    return (_predict(runner, volume, started=started, before_predict=before_predict),), ()


def load_and_predict(
    runner: ModelRunner,
    paths: Sequence[Path],
    *,
    volume: Volume | None = None,
    before_predict: Callable[[], object] | None = None,
) -> tuple[Volume, Prediction, dict[str, float]]:
    """:func:`predict_each` of a series with one input: the volume, or the one film of a
    projection series that the model accepts (the notes on the films left out added to
    the volume's notes).

    Raises:
        InvalidInputError: as :func:`predict_each`.
        ValueError: the model accepts several films of the series (use
            :func:`predict_each`, which runs it on each).
    """
    runs, notes = predict_each(runner, paths, volume=volume, before_predict=before_predict)
    if len(runs) != 1:
        raise ValueError(
            f"the model accepts {len(runs)} radiographs of the series; predict_each runs it on each"
        )
    (run,) = runs
    loaded = replace(run.volume, notes=(*notes, *run.volume.notes)) if notes else run.volume
    return loaded, run.prediction, run.timings


def write_results(
    volume: Volume,
    prediction: Prediction,
    manifest: ModelManifest,
    *,
    out_dir: Path,
    profiles: Mapping[str, OutputProfile] | None = None,
    flagged: Plausibility | None = None,
    place: ResultPlace | None = None,
) -> WrittenResults:
    """Write what ``profiles`` (name -> profile; default: one default profile) ask for.

    The model's manifest (``outputs``) bounds what is written: a classification model
    has no SEG and no Secondary Capture. ``flagged``: the verdict on a result outside its
    model's expectations that is delivered anyway (a route's ``on_implausible:
    deliver_flagged``): every object's Series Description starts with ``CHECK`` and the
    SR says what was out of range (:mod:`inference.plausibility`). ``place``: where the
    results of one of several films of a job go (:class:`ResultPlace`).

    Raises:
        InvalidInputError: (``stage="write"``) a value copied from the source does not
            conform, or the labels do not fit the manifest.
    """
    chosen = dict(profiles) if profiles else {"": DEFAULT_PROFILE}
    writer = _Writer(
        volume,
        prediction,
        manifest,
        out_dir,
        flagged=flagged.problems if flagged else (),
        place=place or ResultPlace(),
    )
    try:
        deliveries = {name: writer.write(profile) for name, profile in chosen.items()}
    except BaseException:
        writer.finish(quietly=True)  # the error that stopped the writing is the one to tell
        raise
    writer.finish()
    delivered = [f for files in deliveries.values() for f in files]
    first_seg = next((f.sop_instance_uid for f in delivered if f.kind == "seg"), "")
    first_sr = next((f.sop_instance_uid for f in delivered if f.kind == "sr"), "")
    return WrittenResults(
        files=tuple(writer.written.values()),
        deliveries=deliveries,
        seg_sop_instance_uid=first_seg,
        sr_sop_instance_uid=first_sr,
        measurements_ml=writer.measurements_ml(),
        probabilities={c.spec.name: c.probability for c in prediction.classes},
    )


class _Writer:
    """Builds each result object once, whichever profiles ask for it."""

    def __init__(
        self,
        volume: Volume,
        prediction: Prediction,
        manifest: ModelManifest,
        out_dir: Path,
        *,
        flagged: tuple[str, ...] = (),
        place: ResultPlace,
    ) -> None:
        #: What was out of range in a result delivered flagged (empty: a normal result).
        self.flagged = flagged
        self.place = place
        #: The header naming the result series (Series Number and Description).
        self.series_source = place.series_source or volume.source_headers[0]
        #: A film's results are its own: its SOP Instance UID enters theirs.
        self.source_instance = (
            str(volume.source_headers[0].SOPInstanceUID) if volume.projection is not None else ""
        )
        self.volume = volume
        self.prediction = prediction
        self.manifest = manifest
        self.out_dir = out_dir
        self.written: dict[Path, ResultFile] = {}
        self._segs: dict[str, hd.seg.Segmentation] = {}
        self._findings: tuple[SegmentFinding, ...] | None = None
        #: Values the objects of this result share (UIDs, codes) are checked once.
        self.checker = StrictChecker()
        self._disk = ThreadPoolExecutor(max_workers=1, thread_name_prefix="results-disk")
        self._stored: list[Future[Path]] = []

    def finish(self, *, quietly: bool = False) -> None:
        """Wait until every object is on disk (and stop the writing thread).

        Raises:
            OSError: a file could not be written (the first such error), unless
                ``quietly``.
        """
        self._disk.shutdown(wait=True)
        if not quietly:
            for stored in self._stored:
                stored.result()

    @property
    def findings(self) -> tuple[SegmentFinding, ...]:
        if self._findings is None:
            labels = self.prediction.labels
            assert labels is not None  # only segmentations have findings
            self._findings = segment_findings(self.volume, labels, self.manifest)
        return self._findings

    def measurements_ml(self) -> dict[str, float]:
        # A radiograph's segments have areas (in the SR), not volumes.
        if self.prediction.labels is None or self.volume.projection is not None:
            return {}
        volumes = {f.label.name: f.volume_ml for f in self.findings}
        volumes["total"] = float(f"{sum(volumes.values()):.6g}")
        return volumes

    def series_number(self, kind: str) -> int:
        """Series Number of this job's results of ``kind`` (seg, sr, sc, pdf)."""
        return result_series_number(self.series_source, self.manifest.id, kind)

    def description(self, kind: str) -> str:
        """Series Description of this job's results of ``kind``: every writer gets it
        from here (see :func:`inference.writers.series_description`)."""
        text = series_description(self.manifest, kind, self.series_source)
        flagged = self.flagged or self.place.flagged
        return f"{CHECK_PREFIX} {text}"[:_LO_MAX] if flagged else text

    def identity(self, kind: str, variant: str = "", index: int | None = None) -> ResultIdentity:
        """The identity of this job's result of ``kind`` (and variant): UIDs derived from
        the source, Series Number and Description, the film's Instance Number (plus
        ``index``, an image's slice, for the images of a Secondary Capture series) and
        the backend and precision the model ran with."""
        uids = result_uids(
            self.volume.series_instance_uid,
            self.manifest.id,
            self.manifest.version,
            kind,
            variant=variant,
            index=index,
            source_instance=self.source_instance,
        )
        return ResultIdentity(
            series_instance_uid=str(uids.series_instance_uid),
            sop_instance_uid=str(uids.sop_instance_uid),
            series_number=self.series_number(kind),
            instance_number=self.place.instance_number + (index or 0),
            description=self.description(kind),
            backend=self.prediction.backend,
            precision=self.prediction.precision,
        )

    def save(self, dataset: Dataset, name: str, kind: str) -> ResultFile:
        path = self.out_dir / name
        if path not in self.written:
            encoded = encode_strictly(dataset, checker=self.checker)
            # Written (and synced to disk) in the background while the next object is
            # built: the SEG of a CT is 13 MB, whose fsync took 0.05-0.15 s.
            self._stored.append(self._disk.submit(store, encoded, path, dataset))
            self.written[path] = ResultFile(
                path=path,
                kind=kind,
                sop_instance_uid=str(dataset.SOPInstanceUID),
                sop_class_uid=str(dataset.SOPClassUID),
            )
        return self.written[path]

    def once(self, name: str, build: Callable[[], Dataset], kind: str) -> ResultFile:
        """Build and save ``name`` unless it was written already."""
        path = self.out_dir / name
        return self.written[path] if path in self.written else self.save(build(), name, kind)

    def write(self, profile: OutputProfile) -> tuple[ResultFile, ...]:
        outputs = self.manifest.outputs
        files: list[ResultFile] = []
        segmentation = self.prediction.labels is not None
        seg: hd.seg.Segmentation | None = None
        seg_variant = "no-seg"
        if segmentation and outputs.seg and profile.seg != "none":
            encoding: SegmentationType = profile.seg
            seg_variant = _seg_variant(encoding, profile.empty_frames)
            compression = choose_compression(
                encoding,
                profile.compression,
                rows=self.volume.shape[1],
                columns=self.volume.shape[2],
            )
            name = f"seg{'-' + seg_variant if seg_variant else ''}{_suffix(compression)}.dcm"
            seg = self.seg(encoding, profile.empty_frames, seg_variant, compression, name)
            files.append(self.save(seg, name, "seg"))
        if outputs.sr and profile.sr:
            if segmentation:
                name = f"sr{'-' + seg_variant if seg_variant else ''}.dcm"
                files.append(self.once(name, lambda: self.build_sr(seg, seg_variant), "sr"))
            else:
                files.append(self.once("sr.dcm", self.build_classification_sr, "sr"))
        # The Secondary Capture and the PDF cost far more than the SEG and SR: only for a
        # profile that asks for them.
        if segmentation and outputs.sc and profile.sc:
            files.extend(self.sc(profile))
        if outputs.pdf and profile.pdf:
            files.append(self.once("pdf.dcm", self.build_pdf, "pdf"))
        return tuple(files)

    # --- SEG and SR ---------------------------------------------------------------

    def seg(
        self,
        encoding: SegmentationType,
        empty_frames: EmptyFrames,
        variant: str,
        compression: Compression | None,
        name: str,
    ) -> hd.seg.Segmentation:
        """The SEG of this variant in this compression (file ``name``), built once.

        The SR of a variant references whichever of its SEGs was built first: they
        differ only in their transfer syntax, not in their identity or segments.
        """
        if name not in self._segs:
            self._segs[name] = self.build_seg(encoding, empty_frames, variant, compression)
        return self._segs[name]

    def build_seg(
        self,
        encoding: SegmentationType,
        empty_frames: EmptyFrames,
        variant: str,
        compression: Compression | None,
    ) -> hd.seg.Segmentation:
        labels = self.prediction.labels
        assert labels is not None
        return build_seg(
            self.volume,
            labels,
            self.manifest,
            identity=self.identity("seg", variant),
            segmentation_type=encoding,
            empty_frames=empty_frames,
            transfer_syntax_uid=_syntax(compression),
            findings=self.findings,
        )

    def build_sr(self, seg: hd.seg.Segmentation | None, seg_variant: str) -> Dataset:
        labels = self.prediction.labels
        assert labels is not None
        return build_sr(
            seg,
            self.volume,
            labels,
            self.manifest,
            identity=self.identity("sr", seg_variant),
            findings=self.findings,
            implausible=self.flagged,
        )

    def build_classification_sr(self) -> Dataset:
        return build_classification_sr(
            self.volume,
            self.prediction.classes,
            self.manifest,
            identity=self.identity("sr"),
            implausible=self.flagged,
        )

    # --- Secondary Capture and PDF ------------------------------------------------

    def sc(self, profile: OutputProfile) -> list[ResultFile]:
        labels = self.prediction.labels
        assert labels is not None
        # Secondary Capture images are at least MIN_WIDTH across.
        compression = choose_compression("sc", profile.compression, rows=512, columns=512)
        folder = f"sc{_suffix(compression)}"
        # The series UID is derived without the index; each image's SOP Instance UID and
        # Instance Number with it.
        series_uid = self.identity("sc").series_instance_uid
        images = build_sc_images(
            self.volume,
            labels,
            self.findings,
            self.manifest,
            identity=lambda index: replace(
                self.identity("sc", index=index), series_instance_uid=series_uid
            ),
            max_images=profile.sc_max_images,
            transfer_syntax_uid=_syntax(compression),
            skip=lambda index: (self.out_dir / folder / f"{index + 1:04d}.dcm") in self.written,
        )
        for index, image in images:
            self.save(image, f"{folder}/{index + 1:04d}.dcm", "sc")
        return [
            self.written[self.out_dir / folder / f"{index + 1:04d}.dcm"]
            for index in sorted(i for i, _ in images)
        ]

    def build_pdf(self) -> Dataset:
        key_image = None
        referenced: list[int] = []
        findings: Sequence[SegmentFinding] = ()
        labels = self.prediction.labels
        if labels is not None:
            findings = self.findings
            largest = max(findings, key=lambda f: f.voxels)
            if largest.key_slice is not None:
                index = largest.key_slice.index
                key_image = render_slice(
                    self.volume,
                    labels,
                    findings,
                    self.manifest,
                    index=index,
                    window=window_of(self.volume),
                    caption=f"slice {index + 1} of {self.volume.shape[0]}",
                ).pixels
                referenced = [index]
        identity = self.identity("pdf")
        document = summary_pdf(
            self.volume,
            self.manifest,
            identity=identity,
            findings=findings,
            classes=self.prediction.classes,
            key_image=key_image,
        )
        return build_encapsulated_pdf(
            self.volume, self.manifest, document, identity=identity, referenced_slices=referenced
        )
