"""Each model's results week by week, so that drift shows: the Models page and its JSON.

================================ ====== ===================================================
``/models``                      GET    box charts per week (``?weeks=12&segment=total``)
``/api/models/drift``            GET    the same distributions (JSON)
================================ ====== ===================================================

Read by anyone who may read the dashboard; no patient data is shown (model ids, versions,
volumes and probabilities only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse, Response
from markupsafe import Markup

from core.ledger import DriftReading, ModelDrift
from core.ledger.drift import DEFAULT_WEEKS, MAX_WEEKS, TOTAL
from monitor.drift_charts import chart_id, probability_svg, share_svg, volume_svg
from monitor.web.common import ApiPrincipal, PagePrincipal, ServicesDep
from monitor.web.views import context, page

router = APIRouter()

Weeks = Annotated[int, Query(ge=1, le=MAX_WEEKS, description="ISO weeks, the current one last")]


@dataclass(frozen=True, slots=True)
class ModelSection:
    """What the page shows of one model version (delivered or shadow)."""

    model: ModelDrift
    id: str
    segment: str | None
    volume: Markup | None
    probabilities: list[tuple[str, Markup]]
    share: Markup | None


def section(model: ModelDrift, week_names: list[str], segment: str) -> ModelSection:
    segments = model.segments
    shown = segment if segment in segments else (TOTAL if TOTAL in segments else None)
    classes = model.classes
    return ModelSection(
        model=model,
        id=chart_id("model", model),
        segment=shown,
        volume=volume_svg(model, week_names, shown) if shown else None,
        probabilities=[(c, probability_svg(model, week_names, c)) for c in classes],
        share=share_svg(model, week_names) if classes else None,
    )


@router.get("/models", response_class=HTMLResponse, include_in_schema=False)
def models_page(
    svc: ServicesDep,
    principal: PagePrincipal,
    weeks: Weeks = DEFAULT_WEEKS,
    segment: Annotated[str, Query(max_length=64)] = TOTAL,
) -> Response:
    ctx = context(svc, principal)
    reading: DriftReading = svc.readings.model_drift(weeks=weeks)
    return page(
        ctx,
        "models.html",
        "Models",
        reading=reading,
        weeks=weeks,
        sections=[section(m, reading.week_names, segment) for m in reading.models],
        refresh=False,
    )


@router.get("/api/models/drift", summary="Each model's volumes and probabilities per ISO week")
def drift(svc: ServicesDep, _principal: ApiPrincipal, weeks: Weeks = DEFAULT_WEEKS) -> Any:
    return svc.readings.model_drift(weeks=weeks).as_dict()
