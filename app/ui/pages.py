"""/ui: server-rendered pages over the registry's services (no HTTP calls to itself)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Response
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse

from app.api.deps import CheckpointsDep, DiffsDep, GenerationDep, VerificationsDep
from app.api.translating_route import TranslatingRoute
from app.display import training_rows
from app.errors import AppError, Conflict, NotFound
from app.services.checkpoints import MAX_PAGE, CheckpointService
from app.services.generation import GenerationCatalog
from app.services.views import CheckpointView
from app.ui.charts import line_chart
from app.ui.report import frobenius_chart, layer_chart
from app.ui.templating import STATIC_DIR, render, report_context

_STATIC_TYPES = {"ui.css": "text/css", "ui.js": "text/javascript"}
_PAGE_SIZE = 50


class _HTMLRoute(TranslatingRoute):
    """Errors on a page are pages too, with the status and message the API would give."""

    def render(self, exc: AppError, param: str | None) -> Response:
        page = render("error.html", title=f"Error {exc.status}", error=exc, param=param)
        return HTMLResponse(page, status_code=exc.status, headers=exc.headers)


router = APIRouter(prefix="/ui", route_class=_HTMLRoute, include_in_schema=False)


def _page(template: str, **context: Any) -> HTMLResponse:
    return HTMLResponse(render(template, **context))


@router.get("/static/{filename}")
def static_file(filename: str) -> FileResponse:
    media_type = _STATIC_TYPES.get(filename)
    if media_type is None:
        raise NotFound(f"no static file {filename!r}", code="static_not_found")
    return FileResponse(STATIC_DIR / filename, media_type=media_type)


@router.get("")
def checkpoints_page(
    checkpoints: CheckpointsDep, name: str | None = None, cursor: str | None = None
) -> HTMLResponse:
    name = name.strip() if name and name.strip() else None
    page = checkpoints.list(name=name, alias=None, cursor=cursor, limit=_PAGE_SIZE)
    return _page("index.html", title="Checkpoints", page=page, name=name)


@router.get("/checkpoints/{ref}")
def checkpoint_page(
    ref: str,
    checkpoints: CheckpointsDep,
    verifications: VerificationsDep,
    generation: GenerationDep,
) -> HTMLResponse:
    view = checkpoints.get(ref)
    return _page(
        "checkpoint.html",
        title=view.ref,
        checkpoint=view,
        tensors=checkpoints.tensors(view.id).tensors,
        verifications=verifications.list_for(view.id).items,
        not_servable=_serving_problem(generation.catalog, view.id),
        training_rows=training_rows(view.training) if view.training else [],
        raw_json=view.model_dump_json(indent=2),
    )


def _serving_problem(catalog: GenerationCatalog, checkpoint_id: str) -> str | None:
    """Why the checkpoint cannot generate text (None when the Playground can serve it)."""
    try:
        catalog.resolve(checkpoint_id)
    except Conflict as exc:
        return exc.message
    return None


@router.get("/verifications/{verification_id}")
def verification_page(verification_id: str, verifications: VerificationsDep) -> HTMLResponse:
    report = verifications.get(verification_id).model_dump(mode="json")
    return _page("report.html", **report_context(report), standalone=False)


@router.get("/diff")
def diff_form(a: str = Query(min_length=1), b: str = Query(min_length=1)) -> RedirectResponse:
    """The checkpoint page's "compare with" form lands here."""
    return RedirectResponse(router.url_path_for("diff_page", a=a.strip(), b=b.strip()), 303)


@router.get("/diff/{a}/{b}")
def diff_page(a: str, b: str, checkpoints: CheckpointsDep, diffs: DiffsDep) -> HTMLResponse:
    left, right = checkpoints.get(a), checkpoints.get(b)
    diff = diffs.diff(left.id, right.id)
    changed = [(t.name, t.frobenius_delta) for t in diff.tensors if t.status == "changed"]
    return _page(
        "diff.html",
        title=f"{left.ref} → {right.ref}",
        a=left,
        b=right,
        diff=diff,
        chart=frobenius_chart(changed) if changed else None,
        layers=layer_chart(changed) if changed else None,
    )


@router.get("/training/{name}")
def training_page(name: str, checkpoints: CheckpointsDep) -> HTMLResponse:
    versions = _all_versions(checkpoints, name)
    if not versions:
        raise NotFound(f"no checkpoint named {name!r}", code="checkpoint_not_found")
    best = next((v for v in versions if "best" in v.aliases), None)
    return _page(
        "training.html",
        title=f"Training of {name}",
        name=name,
        versions=versions,
        best=best,
        chart=_loss_chart(versions, best),
        x_label="epoch"
        if any(_training_number(v, "epoch") is not None for v in versions)
        else "version",
    )


@router.get("/playground")
def playground_page(generation: GenerationDep, ref: str | None = None) -> HTMLResponse:
    servable = generation.catalog.servable()
    return _page("playground.html", title="Playground", servable=servable, selected=ref)


def _all_versions(checkpoints: CheckpointService, name: str) -> list[CheckpointView]:
    items: list[CheckpointView] = []
    cursor: str | None = None
    while True:
        page = checkpoints.list(name=name, alias=None, cursor=cursor, limit=MAX_PAGE)
        items.extend(page.items)
        if page.next_cursor is None:
            return sorted(items, key=lambda view: view.version)
        cursor = page.next_cursor


def _loss_chart(versions: list[CheckpointView], best: CheckpointView | None) -> Any:
    """val_loss and loss by epoch (by version where no epoch was recorded)."""
    series: dict[str, list[tuple[float, float]]] = {"val_loss": [], "loss": []}
    for view in versions:
        for key, points in series.items():
            if (value := _training_number(view, key)) is not None:
                points.append((_x(view), value))
    if not any(series.values()):
        return None
    marked = None
    if best is not None:
        value = _training_number(best, "val_loss")
        value = value if value is not None else _training_number(best, "loss")
        marked = (_x(best), value) if value is not None else None
    return line_chart(series, marked=marked, marker_label=f"best: {best.ref}" if best else "")


def _x(view: CheckpointView) -> float:
    epoch = _training_number(view, "epoch")
    return epoch if epoch is not None else float(view.version)


def _training_number(view: CheckpointView, key: str) -> float | None:
    value = (view.training or {}).get(key)
    if isinstance(value, int | float) and not isinstance(value, bool) and value == value:
        return float(value)
    return None
