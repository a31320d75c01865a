"""The admin's pages: dashboard (progress and agreement), disagreement queue, task import, pairs export."""

from __future__ import annotations

import json
import shutil
import tempfile
from itertools import combinations
from pathlib import Path

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import Response

from rlhfkit.data.errors import RlhfkitError
from rlhfkit.data.records import Ranking
from rlhfkit.feedback.agreement import PairCounts, agreement_counts, by_task
from rlhfkit.feedback.rules import MAX_COMPLETIONS, MAX_ID_CHARS
from rlhfkit.feedback.web.pages import render
from rlhfkit.feedback.web.security import Session, admin_session

# Every route here also names admin_session itself; the router-wide one keeps a new route from forgetting.
router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(admin_session)])


def disagreement_queue(rankings: list[Ranking]) -> list[dict]:
    """Tasks ranked by two or more labelers, least agreement first: the share of completion pairs on
    which two of its labelers agree, pooled over its labeler pairs and the pairs both ordered strictly
    (agreement.percent_agreement's measure). Tasks with no strictly ordered pair come last."""
    rows = []
    for prompt_id, per in by_task(rankings).items():
        if len(per) < 2:
            continue
        counts = sum((agreement_counts(per[a].marks, per[b].marks) for a, b in combinations(sorted(per), 2)),
                     PairCounts())
        some = next(iter(per.values()))
        rows.append({
            "prompt_id": prompt_id, "prompt": some.prompt, "texts": some.texts, "counts": counts,
            "agreement": counts.agree / counts.strict if counts.strict else None,
            "rankings": [(lab, per[lab].marks) for lab in sorted(per)],
        })  # fmt: skip
    rows.sort(key=lambda r: (r["agreement"] is None, r["agreement"] or 0.0, -r["counts"].disagree))
    return rows


@router.get("")
def dashboard(request: Request, s: Session = Depends(admin_session)):
    from rlhfkit.feedback.label import feedback_report
    from rlhfkit.feedback.report import careful_agreement

    store = request.app.state.store
    try:
        report = feedback_report(store)
    except RlhfkitError:  # no rankings yet
        report = None
    return render(request, "admin_dashboard.html", s=s, progress=store.progress(),
                  report=report, careful=report and careful_agreement(report), labelers=store.list_labelers())


@router.get("/queue")
def queue(request: Request, limit: int = Query(50, ge=1, le=10_000), s: Session = Depends(admin_session)):
    rows = disagreement_queue(request.app.state.store.current_rankings())
    return render(request, "admin_queue.html", s=s, rows=rows[:limit], total=len(rows))


def _import_page(request: Request, s: Session, result, criterion: str):
    return render(request, "admin_import.html", s=s, result=result, criterion=criterion,
                  max_completions=MAX_COMPLETIONS, max_id_chars=MAX_ID_CHARS)


@router.get("/import")
def import_form(request: Request, s: Session = Depends(admin_session)):
    return _import_page(request, s, None, request.app.state.settings.criterion)


@router.post("/import")
def import_completions(
    request: Request,
    file: UploadFile = File(description="completions.jsonl: one completion per line, K per prompt"),
    overlap: int = Form(3, ge=1, le=1000, description="How many different labelers rank each task"),
    criterion: str = Form("", max_length=1000),
    s: Session = Depends(admin_session),
):
    """The upload's size is capped while it streams in (security.BodyLimit, settings.max_upload_mb)."""
    from rlhfkit.feedback.label import import_tasks

    criterion = criterion.strip() or request.app.state.settings.criterion
    shown_as = Path(file.filename or "").name or "the uploaded file"  # never the server's temporary path
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "completions.jsonl"
        with path.open("wb") as out:
            shutil.copyfileobj(file.file, out)
        counts = import_tasks(request.app.state.store, path, criterion=criterion, overlap=overlap, shown_as=shown_as)
    return _import_page(request, s, counts, criterion)


@router.get("/pairs.jsonl")
def export_pairs(request: Request):
    """Every pair of every current ranking (better completion chosen), as a download; `rlhfkit pairs`
    writes the same with flagged labelers dropped and quality weights."""
    from rlhfkit.data.pairs import ranking_to_pairs

    store = request.app.state.store
    kinds = {lab.name: lab.kind for lab in store.list_labelers()}
    lines = [json.dumps(p.to_dict(), ensure_ascii=False) + "\n"
             for r in store.current_rankings() for p in ranking_to_pairs(r, source=kinds[r.labeler])]
    return Response("".join(lines), media_type="application/x-ndjson",
                    headers={"content-disposition": 'attachment; filename="pairs.jsonl"'})
