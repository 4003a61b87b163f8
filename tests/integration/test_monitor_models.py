"""The dashboard's Models page (each model's results week by week) served by the real
monitor from a real ledger, looked at in headless Chromium (Debian's, driven by
Playwright), and its JSON at ``/api/models/drift``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from core.ledger import Ledger
from core.ledger.drift import week_name, week_start
from core.settings import validate_settings
from monitor.web.server import MonitorServer
from tests.support.drift import classification, finished_job, segmentation
from tests.support.monitor import call
from tests.support.peers import free_port, tool_or_skip

pytestmark = pytest.mark.peers

WEEK = 7 * 86_400.0
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@dataclass
class Monitor:
    ledger: Ledger
    server: MonitorServer

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"


@pytest.fixture
def monitor(tmp_path: Path) -> Iterator[Monitor]:
    """The monitor on 127.0.0.1 without sign-in (anonymous, read-only), on an empty ledger."""
    settings = validate_settings(
        {
            "data_dir": str(tmp_path / "data"),
            "monitor": {"host": "127.0.0.1", "port": free_port()},
        }
    )
    ledger = Ledger(settings.resolved_ledger_url)
    ledger.create_schema()
    server = MonitorServer(settings, ledger, inspector=None)
    server.start()
    try:
        yield Monitor(ledger, server)
    finally:
        server.stop()
        ledger.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    chromium = tool_or_skip("chromium", native=False)
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def weeks_ago(count: int) -> float:
    """A moment in the ISO week ``count`` weeks before this one (its first second)."""
    return week_start(time.time()) - count * WEEK + 1.0


def four_weeks_of_livers(ledger: Ledger) -> None:
    """ct-organs: five livers a week, 500 mL larger in the last two weeks than before."""
    for week, shift in ((3, 0.0), (2, 0.0), (1, 500.0), (0, 500.0)):
        for liver in (1000.0, 1100.0, 1200.0, 1300.0, 1400.0):
            finished_job(ledger, segmentation(liver + shift, 200.0), ended=weeks_ago(week))


def medians_on_screen(page: Any, chart: str) -> dict[str, float]:
    """Per week, the height on the screen of the median bar of ``chart`` (pixels from the
    top of the page: smaller is higher)."""
    found: dict[str, float] = {}
    for line in page.locator(f"#{chart} line.box-median").all():
        box = line.bounding_box()
        assert box is not None
        found[line.get_attribute("data-week")] = box["y"]
    return found


def test_the_models_page_draws_a_box_per_week_and_a_larger_volume_shows_as_a_higher_median(
    monitor: Monitor, browser: Any
) -> None:
    four_weeks_of_livers(monitor.ledger)
    weeks = [week_name(week_start(weeks_ago(n))) for n in (3, 2, 1, 0)]
    page = browser.new_page(viewport={"width": 1400, "height": 1000})

    page.goto(monitor.url + "/")
    page.click("header >> text=Models")
    page.wait_for_url(monitor.url + "/models")

    section = page.locator("#model-ct-organs-1-0")
    assert section.get_attribute("data-shadow") == "false"
    assert page.locator("#counted").inner_text().startswith("Counted: jobs that ended DONE")
    boxes = page.locator("#volume-ct-organs-1-0 rect.box")
    assert boxes.count() == 4
    assert [b.get_attribute("data-week") for b in boxes.all()] == weeks
    assert [b.get_attribute("data-median") for b in boxes.all()] == [
        "1400",
        "1400",
        "1900",
        "1900",
    ]
    heights = medians_on_screen(page, "volume-ct-organs-1-0")
    assert heights[weeks[0]] == heights[weeks[1]]
    assert heights[weeks[2]] == heights[weeks[3]]
    assert heights[weeks[2]] < heights[weeks[1]], "a larger median is drawn higher"
    assert "Volume of total (mL)" in section.inner_text()

    page.select_option("#model-ct-organs-1-0 select[name=segment]", "spleen")
    page.click("#model-ct-organs-1-0 button[type=submit]")
    page.wait_for_url("**/models?weeks=12&segment=spleen")

    assert "Volume of spleen (mL)" in page.locator("#model-ct-organs-1-0").inner_text()
    spleens = page.locator("#volume-ct-organs-1-0 rect.box").all()
    assert [b.get_attribute("data-median") for b in spleens] == ["200"] * 4
    assert len(set(medians_on_screen(page, "volume-ct-organs-1-0").values())) == 1


def test_a_classification_model_shows_probabilities_and_the_top_class_share_per_week(
    monitor: Monitor, browser: Any
) -> None:
    finished_job(
        monitor.ledger, classification(0.1, 0.2, 0.3, 0.9), ended=weeks_ago(1), model="cxr"
    )
    finished_job(monitor.ledger, classification(0.7, 0.8), ended=weeks_ago(0), model="cxr")
    finished_job(monitor.ledger, segmentation(900.0, 100.0), ended=weeks_ago(0), shadow=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})

    page.goto(monitor.url + "/models?weeks=4")

    shares = page.locator("#share-cxr-2-1 rect.share")
    assert [
        (s.get_attribute("data-class"), s.get_attribute("data-share")) for s in shares.all()
    ] == [
        ("normal", "0.75"),
        ("pneumonia", "0.25"),
        ("pneumonia", "1"),
    ]
    assert page.locator("#probability-cxr-2-1-pneumonia rect.box").count() == 2
    medians = page.locator("#probability-cxr-2-1-pneumonia rect.box").all()
    assert [m.get_attribute("data-median") for m in medians] == ["0.25", "0.75"]
    shadow = page.locator("#model-ct-organs-1-0-shadow")
    assert shadow.get_attribute("data-shadow") == "true"
    assert "shadow" in shadow.locator("h2").inner_text()
    assert page.locator("#volume-ct-organs-1-0-shadow rect.box").count() == 1


def test_an_empty_ledger_shows_that_no_jobs_have_finished_yet(
    monitor: Monitor, browser: Any
) -> None:
    page = browser.new_page()

    page.goto(monitor.url + "/models")

    assert page.locator("#no-models").inner_text().startswith("No finished jobs yet")
    assert page.locator("svg").count() == 0


def test_the_api_gives_the_same_weekly_distributions_as_json(monitor: Monitor) -> None:
    four_weeks_of_livers(monitor.ledger)

    answer = call(monitor.url + "/api/models/drift?weeks=6")
    refused = call(monitor.url + "/api/models/drift?weeks=0")

    assert answer.status == 200, answer.text
    reading = answer.json()
    assert len(reading["weeks"]) == 6 and reading["truncated"] is False
    [model] = reading["models"]
    assert (model["model_id"], model["model_version"], model["shadow"]) == (
        "ct-organs",
        "1.0",
        False,
    )
    total = [week["volumes_ml"]["total"] for week in model["weeks"]]
    assert [(t["q1"], t["median"], t["q3"], t["n"]) for t in total] == [
        (1300.0, 1400.0, 1500.0, 5),
        (1300.0, 1400.0, 1500.0, 5),
        (1800.0, 1900.0, 2000.0, 5),
        (1800.0, 1900.0, 2000.0, 5),
    ]
    assert refused.status == 400 and "weeks" in refused.json()["error"]
