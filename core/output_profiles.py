"""What a destination receives: its output profile (``destinations.<name>.outputs``).

Viewers and archives differ in what they can display: a PACS without SEG support shows
nothing of a segmentation, some viewers hang on segments without frames, some archives
refuse compressed transfer syntaxes. Each destination therefore declares which result
objects it gets and how they are encoded; the worker writes what any of a job's
destinations needs and puts in each destination's outbox only what its profile names.

```yaml
destinations:
  pacs:   {host: pacs, port: 104, ae_title: PACS}             # default: BINARY SEG + SR
  viewer: {type: dicomweb, url: "http://viewer/dicom-web",
           outputs: {seg: labelmap, compression: [jpeg-ls, rle]}}
  legacy: {host: old-pacs, port: 104, ae_title: OLD,
           outputs: {seg: none, sr: false, sc: true, pdf: true}}
```
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: ``binary``: Segmentation Storage, one bit per pixel and one frame per segment and slice
#: (PS3.3 A.51); ``labelmap``: Label Map Segmentation Storage, one frame per slice whose
#: pixel values are segment numbers (PS3.3 A.51.5, supplement 243); ``none``: no SEG.
SegEncoding = Literal["binary", "labelmap", "none"]

#: How frames without any segmented pixel are handled:
#: ``one-per-segment``: only frames with pixels, plus one empty frame for a segment that
#: has none (a segment without frames is legal, but some viewers hang on it);
#: ``omit``: only frames with pixels (a segment the model did not find has no frame);
#: ``all``: a frame for every source slice (and, BINARY, every segment), empty or not.
EmptyFrames = Literal["one-per-segment", "omit", "all"]

#: Lossless compressed transfer syntaxes a destination may accept (PS3.5 A.4): RLE
#: Lossless, JPEG-LS Lossless, JPEG 2000 Lossless.
Compression = Literal["rle", "jpeg-ls", "jpeg2000"]


class OutputProfile(BaseModel):
    """The result objects one destination receives, and their encoding."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seg: SegEncoding = "binary"
    #: The TID 1500 Measurement Report (Comprehensive 3D SR).
    sr: bool = True
    #: Secondary Capture images with the outlines burned in and a "not for diagnosis"
    #: banner, for viewers that cannot show a SEG.
    sc: bool = False
    #: An Encapsulated PDF summary (findings, measurements, model identification).
    pdf: bool = False
    empty_frames: EmptyFrames = "one-per-segment"
    #: Compressed transfer syntaxes the destination accepts, in order of preference.
    #: Each object is written in the first one its encoding allows (a BINARY SEG, one
    #: bit per pixel, only in jpeg2000), and uncompressed when none does. Empty: never
    #: compressed. (Our DIMSE sender proposes each file's own transfer syntax, so list
    #: only what the destination accepts.)
    compression: tuple[Compression, ...] = ()
    #: At most this many Secondary Capture images, evenly spread over the slices that
    #: hold a finding (0: every such slice).
    sc_max_images: Annotated[int, Field(ge=0, le=10_000)] = 32

    @model_validator(mode="after")
    def _something_to_send(self) -> OutputProfile:
        if self.seg == "none" and not (self.sr or self.sc or self.pdf):
            raise ValueError(
                "the profile sends nothing: set seg, sr, sc or pdf (a destination that "
                "should get no results need not be named in send_results_to)"
            )
        return self

    @field_validator("compression")
    @classmethod
    def _each_once(cls, compression: tuple[Compression, ...]) -> tuple[Compression, ...]:
        if len(set(compression)) != len(compression):
            raise ValueError(f"lists a transfer syntax twice: {list(compression)}")
        return compression


#: The profile of a destination that declares none: BINARY SEG and SR, uncompressed.
DEFAULT_PROFILE = OutputProfile()
