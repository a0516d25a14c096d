"""The API of reviews: list, read, submit to HR."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from pa import reviews
from pa.web.auth import require_user
from pa.web.offload import run_db
from pa.web.responses import accepted, ok, query_int, query_str


async def list_reviews(request: Request) -> Response:
    """The reviews the caller may see.
    ---
    parameters:
      - {name: fiscalYear, in: query, schema: {type: integer, minimum: 1900, maximum: 9999}}
      - {name: status, in: query, schema: {enum: REVIEW_STATUSES}}
      - {$ref: "#/components/parameters/limit"}
      - {name: offset, in: query, schema: {type: integer, minimum: 0, default: 0}}
    responses: {"200": {$ref: "#/components/responses/OkReviews"}}
    """
    user = await require_user(request)
    fiscal_year = query_int(request, "fiscalYear", minimum=1900, maximum=9999)
    status = query_str(request, "status")
    limit = query_int(request, "limit", 50, minimum=1, maximum=reviews.MAX_LIMIT)
    offset = query_int(request, "offset", 0, minimum=0, maximum=reviews.MAX_ID)
    data = await run_in_threadpool(
        reviews.list_reviews, user.id, user.role,
        fiscal_year=fiscal_year, status=status, limit=limit, offset=offset,
    )
    return ok(data)


async def get_review(request: Request) -> Response:
    """One review the caller may see.
    ---
    parameters: [{$ref: "#/components/parameters/reviewId"}]
    responses: {"200": {$ref: "#/components/responses/OkReview"}}
    """
    user = await require_user(request)
    review = await run_in_threadpool(
        reviews.get_review, user.id, user.role, request.path_params["review_id"]
    )
    return ok(review)


async def submit_to_hr(request: Request) -> Response:
    """Submit a review to HR; a job mails every hr_admin (the review's manager, or an admin).

    The hot path: one transaction (on the loop when SQLite's write lock is
    free), then the event and the enqueue in one Redis round trip.
    ---
    parameters: [{$ref: "#/components/parameters/reviewId"}]
    responses: {"202": {$ref: "#/components/responses/Accepted"}}
    """
    user = await require_user(request)
    review_id: int = request.path_params["review_id"]
    job = await run_db(reviews.record_submit_to_hr, user.id, user.role, review_id)
    await request.app.state.dispatcher.dispatch(job)
    return accepted(
        job, f"Review {review_id} is now submitted_to_hr; HR is being notified."
    )


routes: list[BaseRoute] = [
    Route("/api/reviews", list_reviews, methods=["GET"]),
    Route("/api/reviews/{review_id:id}", get_review, methods=["GET"]),
    Route("/api/reviews/{review_id:id}/submit-to-hr", submit_to_hr, methods=["POST"]),
]
