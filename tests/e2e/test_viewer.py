"""Our SEG and SR in a real viewer: OHIF against Orthanc's DICOMweb, in headless Chromium.

DCMTK's ``storescu`` puts a synthetic chest CT into Orthanc (the PACS, with its DICOMweb
plugin); ct-lungs runs on it through the worker's pipeline and our STOW-RS client sends
the SEG and SR to the same Orthanc. The OHIF viewer (the built ``@ohif/app`` package),
served against that Orthanc, opens the study in Chromium. The test opens our SEG (BINARY,
then Label Map) and checks,
pixel by pixel in a screenshot, that each segment's colour is drawn where its mask is and
nowhere else; then it opens our SR and checks that OHIF lists each lung's measurements
with the volumes we wrote. The screenshots stay in ``test-artifacts/``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image
from scipy import ndimage

from core.output_profiles import OutputProfile, SegEncoding
from core.settings import DicomWebDestination
from inference.pipeline import Labels, ModelRunner
from inference.results import WrittenResults, load_and_predict, write_results
from inference.volume import Volume
from models.registry import BUILTIN_DIR, load_package
from node_services.stow import stow
from pacs_ai.phantom import write_chest_ct_series
from tests.support.peers import Orthanc, storescu, tool_or_skip, wait_for
from tests.support.viewer import OhifServer, ohif_dist_or_skip

pytestmark = [pytest.mark.peers, pytest.mark.slow, pytest.mark.timeout(600)]

# Software WebGL (SwiftShader): the viewer renders with WebGL, and this machine has no GPU.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--ignore-gpu-blocklist",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
VIEWPORT = {"width": 1400, "height": 900}
RIGHT_LUNG, LEFT_LUNG = 1, 2


@dataclass
class Study:
    volume: Volume
    labels: Labels
    written: WrittenResults

    @property
    def uid(self) -> str:
        return str(self.volume.source_headers[0].StudyInstanceUID)

    def slice_of_instance(self, number: int) -> int:
        numbers = [int(h.InstanceNumber) for h in self.volume.source_headers]
        return numbers.index(number)


@pytest.fixture
def seg_encoding() -> SegEncoding:
    return "binary"


@pytest.fixture
def study(dicomweb_orthanc: Orthanc, tmp_path: Path, seg_encoding: SegEncoding) -> Study:
    series = tmp_path / "ct"
    write_chest_ct_series(series, slices=48, size=256)
    paths = sorted(series.glob("*.dcm"))
    assert storescu(paths, "127.0.0.1", dicomweb_orthanc.dicom_port, "ORTHANC").returncode == 0

    package = load_package(BUILTIN_DIR / "ct_lungs")
    volume, prediction, _ = load_and_predict(ModelRunner(package, device="cpu"), paths)
    profile = OutputProfile(seg=seg_encoding)
    written = write_results(
        volume, prediction, package.manifest, out_dir=tmp_path / "out", profiles={"pacs": profile}
    )
    destination = DicomWebDestination(type="dicomweb", url=f"{dicomweb_orthanc.url}/dicom-web")
    outcomes = stow(destination, [(f.sop_instance_uid, f.path) for f in written.files])
    assert all(o.stored for o in outcomes), outcomes
    assert prediction.labels is not None
    return Study(volume=volume, labels=prediction.labels, written=written)


@pytest.fixture
def viewer(dicomweb_orthanc: Orthanc) -> Iterator[OhifServer]:
    with OhifServer(ohif_dist_or_skip(), dicomweb_orthanc.http_port) as server:
        yield server


@pytest.fixture
def page(viewer: OhifServer, artifacts_dir: Path) -> Iterator[Any]:
    chromium = tool_or_skip("chromium", native=False)
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        messages: list[str] = []
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: messages.append(f"page error: {e}"))
            yield page
        finally:
            browser.close()
            (artifacts_dir / "console.txt").write_text("\n".join(messages) + "\n")


def open_study(page: Any, viewer: OhifServer, study: Study) -> None:
    page.goto(f"{viewer.url}/viewer?StudyInstanceUIDs={study.uid}")
    # A first visit starts OHIF's guided tour over the viewport.
    page.get_by_text("Skip all").click(timeout=120_000)


#: OHIF's notifications (sonner toasts) slide in over the viewport's corner, e.g. when
#: the browser is slow; the pixel checks look at the image, not at them. What they said
#: is in the console log kept beside the screenshots.
HIDE_NOTIFICATIONS = "[data-sonner-toaster] { visibility: hidden !important; }"


def screenshot(page: Any, path: Path) -> npt.NDArray[np.int16]:
    page.screenshot(path=str(path))
    clean = path.with_name(path.stem + "-checked.png")
    page.screenshot(path=str(clean), style=HIDE_NOTIFICATIONS)
    return np.asarray(Image.open(clean).convert("RGB"), dtype=np.int16)


def shown_instance_number(page: Any) -> int | None:
    """The instance number in the viewport's corner overlay (``I:40 (9/48)``), if shown."""
    text = page.locator("body").inner_text()
    match = re.search(r"I:\s*(\d+)\s*\(\d+/\d+\)", text)
    return int(match.group(1)) if match else None


def image_to_screen(page: Any, rows: int, columns: int) -> Callable[[Any, Any], Any]:
    """Map image (row, column) centres to screenshot pixels: OHIF fits the image, centred."""
    canvas = page.locator("canvas.cornerstone-canvas").first
    box = canvas.bounding_box()
    scale = min(box["width"] / columns, box["height"] / rows)
    left = box["x"] + (box["width"] - columns * scale) / 2
    top = box["y"] + (box["height"] - rows * scale) / 2

    def to_screen(r: Any, c: Any) -> Any:
        return (top + (r + 0.5) * scale).astype(int), (left + (c + 0.5) * scale).astype(int)

    return to_screen


def tint(pixels: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
    """How far from grey each pixel is (a CT image is grey; an overlay is not)."""
    return np.asarray(pixels.max(axis=-1) - pixels.min(axis=-1), dtype=np.int16)


@pytest.mark.parametrize("seg_encoding", ["binary", "labelmap"])
def test_ohif_draws_our_seg_over_the_ct_exactly_where_the_masks_are(
    page: Any, viewer: OhifServer, study: Study, artifacts_dir: Path, seg_encoding: SegEncoding
) -> None:
    open_study(page, viewer, study)
    page.get_by_text("SEG", exact=True).dblclick()
    page.get_by_role("button", name="Yes").click(timeout=60_000)

    shot_path = artifacts_dir / f"ohif-seg-{seg_encoding}.png"
    seen: dict[str, Any] = {}

    def overlay_drawn() -> bool:
        # Read the slice and the screen together: OHIF scrolls to the segmentation.
        number = shown_instance_number(page)
        shot = screenshot(page, shot_path)
        if number is None or number != shown_instance_number(page):
            return False
        labels = study.labels[study.slice_of_instance(number)]
        found = [label for label in (RIGHT_LUNG, LEFT_LUNG) if (labels == label).sum() > 50]
        to_screen = image_to_screen(page, *labels.shape)
        seen.update(labels=labels, found=found, shot=shot, to_screen=to_screen)
        return bool(found) and all((tint(inside(label)) > 25).mean() > 0.9 for label in found)

    def inside(label: int) -> npt.NDArray[np.int16]:
        core = ndimage.binary_erosion(seen["labels"] == label, iterations=2)
        return np.asarray(seen["shot"][seen["to_screen"](*np.nonzero(core))], dtype=np.int16)

    wait_for(overlay_drawn, 90, "the SEG overlay drawn over a slice with lung in it")

    # Each lung in its own colour (right lung reddish, left lung bluish: the manifest's).
    if RIGHT_LUNG in seen["found"]:
        right = inside(RIGHT_LUNG)
        assert (right[:, 0] > right[:, 2] + 20).mean() > 0.9
    if LEFT_LUNG in seen["found"]:
        left = inside(LEFT_LUNG)
        assert (left[:, 2] > left[:, 0] + 20).mean() > 0.9
    # Nowhere else: the image more than 3 pixels away from any mask stays grey.
    away = ~ndimage.binary_dilation(seen["labels"] > 0, iterations=3)
    outside = seen["shot"][seen["to_screen"](*np.nonzero(away))]
    assert (tint(outside) > 25).mean() < 0.01


def test_ohif_lists_the_measurements_of_our_sr_for_each_lung(
    page: Any, viewer: OhifServer, study: Study, artifacts_dir: Path
) -> None:
    volumes = study.written.measurements_ml
    open_study(page, viewer, study)
    page.get_by_text("SR", exact=True).dblclick()

    shown: dict[str, float] = {}
    for step in range(2):
        if step:
            page.locator('[data-cy="viewport-action-arrows-right"]').click()
        wait_for(
            lambda: measurement_shown(page)[0] not in ("", *shown),
            60,
            "the next SR measurement shown in the viewport",
        )
        lung, volume = measurement_shown(page)
        shown[lung] = volume
        page.screenshot(path=str(artifacts_dir / f"ohif-sr-{lung.lower().replace(' ', '-')}.png"))
        text = page.locator("body").inner_text()
        assert "Attenuation Coefficient" in text
        assert re.search(r"Area: [\d.]+ mm2", text)

    assert set(shown) == {"Right lung", "Left lung"}
    for lung, volume in shown.items():
        assert volume == pytest.approx(volumes[lung], abs=0.006), lung


def measurement_shown(page: Any) -> tuple[str, float]:
    """The lung and volume of the SR measurement OHIF draws (``Volume: 774.47 ml ...``)."""
    text = page.locator("body").inner_text()
    match = re.search(r"Volume: ([\d.]+) ml.*?\b(Right lung|Left lung)\b", text, re.DOTALL)
    return (match.group(2), float(match.group(1))) if match else ("", 0.0)
