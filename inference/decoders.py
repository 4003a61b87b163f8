"""Which of pydicom's installed decoding plugins reads each compressed transfer syntax.

pydicom tries the plugins it finds in its own order, which is not the fastest one: for
JPEG-LS it used libjpeg (pylibjpeg-libjpeg) when CharLS (pyjpegls, which highdicom
installs) decodes the same 512 x 512 CT slice three times faster (22 ms against 7 ms
on 2 CPU cores; 3.8 s against 13.9 s for the 275-slice LIDC CT, where SimpleITK's GDCM
took 5.2 s). For JPEG 2000 it used Pillow; pylibjpeg-openjpeg, the same OpenJPEG, reads
the 275-slice LIDC CT in JPEG 2000 Lossless a little faster (8.2-8.6 s against 8.5-9.0 s
of CPU, 2 cores; neither gains from threads, both hold the GIL most of the time). Both
decode losslessly to the same values; the choice is speed only.
"""

from __future__ import annotations

from functools import cache

from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    JPEG2000,
    UID,
    JPEG2000Lossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
)

#: Per transfer syntax, the plugins to prefer, fastest first.
_PREFERRED = {
    JPEGLSLossless: ("pyjpegls",),
    JPEGLSNearLossless: ("pyjpegls",),
    JPEG2000Lossless: ("pylibjpeg",),
    JPEG2000: ("pylibjpeg",),
}


@cache
def decoding_plugin(transfer_syntax: str | None) -> str:
    """The plugin to decode ``transfer_syntax`` with (``""``: pydicom's own choice)."""
    if transfer_syntax is None:
        return ""
    preferred = _PREFERRED.get(UID(transfer_syntax), ())
    if not preferred:
        return ""
    available = get_decoder(UID(transfer_syntax)).available_plugins
    return next((plugin for plugin in preferred if plugin in available), "")
