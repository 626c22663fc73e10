"""The HTTP edge of the ranking service (FastAPI): thin routes over :class:`Ranker`.

Routes validate input against size limits from :class:`Settings`, call one plain function and
turn the service's failures into status codes: 400 (unrankable request), 401 (missing or wrong
bearer token), 413 (body over ``serve_max_body_bytes``), 422 (schema), 503 (no policy yet).
"""

import asyncio
import contextlib
import hmac
import time
from typing import Annotated, Any, Callable, Optional

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, ValidationError, create_model

from streamrl import metrics as M
from streamrl.config import Settings
from streamrl.serving.exceptions import BadRankRequest, InvalidCandidates, NotReady
from streamrl.serving.ranker import Ranker


class RankedItem(BaseModel):
    item_id: str
    score: Optional[float] = Field(description="Policy score; null for an unscored candidate.")
    position: int = Field(ge=0, description="Slot in the feed, 0 first.")
    propensity: float = Field(gt=0, le=1, description="Exact probability that this item was given this slot.")
    unscored: bool = Field(description="Neither in the policy nor in the catalog: placed last.")


class RankResponse(BaseModel):
    request_id: str
    policy_version: int
    user_id: str
    cold_start: bool = Field(description="The user has no stored state (history-free ranking).")
    exploration: str
    items: list[RankedItem]


def _not_a_bool(v: Any) -> Any:
    """JSON ``true`` is not the integer 1 (lax pydantic reads it so; ``3.0`` it may, as JSON Schema does)."""
    if isinstance(v, bool):
        raise ValueError("Input should be a valid integer, not a boolean")
    return v


def rank_request_model(settings: Settings) -> type[BaseModel]:
    """The /rank body with this deployment's size limits."""
    item_id = Annotated[str, StringConstraints(min_length=1, max_length=settings.max_id_bytes)]
    return create_model(
        "RankRequest", __config__=ConfigDict(extra="forbid"),
        user_id=(item_id, Field(description="Who the feed is for (unknown users get a cold start).")),
        candidates=(list[item_id], Field(min_length=1, max_length=settings.serve_max_candidates,
                                         json_schema_extra={"uniqueItems": True},
                                         description="Distinct item ids to rank (duplicates: 400).")),
        k=(Annotated[int, BeforeValidator(_not_a_bool)], Field(10, ge=1, le=settings.serve_max_k,
                                                                description="Slate size (capped at the candidate count).")),
        recent=(Optional[list[item_id]], Field(None, max_length=settings.history_len,
                                               description="Session context from the client: items the user engaged "
                                                           "with most recently (oldest first). Appended to the stored "
                                                           "history where the processor has not applied them yet.")))


class RankBatcher:
    """Ranks the requests that are waiting together in one batched forward pass.

    The first waiting request schedules a flush at the end of the current event-loop iteration,
    or, when the previous batch had company (load), ``linger_s`` later; every request that
    arrives meanwhile shares that forward pass. Under load the short linger trades a little
    latency for larger batches and less CPU per request; a lone request is never delayed.
    """

    def __init__(self, ranker: Ranker, max_batch: int = 32, linger_s: float = 0.0) -> None:
        self.ranker = ranker
        self.max_batch = max_batch
        self.linger_s = linger_s
        self.last_batch = 1
        self.pending: list[tuple[tuple[str, list[str], int], asyncio.Future]] = []

    async def rank(self, user_id: str, candidates: list[str], k: int, recent: list[str] | None = None) -> dict[str, Any]:
        fut = asyncio.get_running_loop().create_future()
        self.pending.append(((user_id, candidates, k, recent), fut))
        if len(self.pending) == 1:
            if self.linger_s and self.last_batch > 1:   # under load: wait for company
                asyncio.get_running_loop().call_later(self.linger_s, self._flush)
            else:                                       # a lone request is not delayed
                asyncio.get_running_loop().call_soon(self._flush)
        return await fut

    def _flush(self) -> None:
        batch, self.pending = self.pending[:self.max_batch], self.pending[self.max_batch:]
        if self.pending:
            asyncio.get_running_loop().call_soon(self._flush)
        M.SERVING_BATCH.observe(len(batch))
        self.last_batch = len(batch)
        try:
            results = self.ranker.rank_many([args for args, _ in batch])
        except Exception as e:  # hand any failure to every waiting request (answered 500), never hang them
            results = [e] * len(batch)
        for (_, fut), res in zip(batch, results):
            if fut.done():
                continue
            if isinstance(res, BaseException):
                fut.set_exception(res)
            else:
                fut.set_result(res)


class RankHandler:
    """``POST /rank`` as one plain coroutine: body bytes and Authorization header in, status,
    JSON bytes and extra headers out. The middleware calls it directly (the hot path skips the
    framework's routing and body machinery); the FastAPI route, which documents it, calls it too."""

    def __init__(self, ranker: Ranker, settings: Settings) -> None:
        self.model = rank_request_model(settings)
        self.token = settings.serve_token.reveal().encode()
        self.batcher = RankBatcher(ranker, linger_s=settings.serve_batch_wait_ms / 1000)
        self.max_id = settings.max_id_bytes
        self.max_candidates = settings.serve_max_candidates
        self.max_k = settings.serve_max_k
        self.max_recent = settings.history_len

    def parse(self, body: bytes) -> tuple[str, list[Any], int, list[str] | None] | None:
        """``(user_id, candidates, k, recent)`` of a body that is plainly well formed, else None (the schema
        decides). The candidate ids themselves are checked by the ranker, which looks each one up
        anyway and only needs to check the few it does not know (InvalidCandidates); a body this
        accepts, the schema accepts with the same values."""
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if type(doc) is not dict or not 2 <= len(doc) <= 4:
            return None
        user_id, candidates, k = doc.get("user_id"), doc.get("candidates"), doc.get("k", 10)
        recent = doc.get("recent")
        if (type(user_id) is not str or type(candidates) is not list or type(k) is not int
                or len(doc) != 2 + ("k" in doc) + ("recent" in doc) or not 0 < len(user_id) <= self.max_id
                or not 0 < len(candidates) <= self.max_candidates or not 0 < k <= self.max_k):
            return None
        if recent is not None and (type(recent) is not list or len(recent) > self.max_recent or not all(
                type(i) is str and 0 < len(i) <= self.max_id for i in recent)):
            return None
        return user_id, candidates, k, recent

    def validate(self, body: bytes) -> tuple[str, list[Any], int, list[str] | None]:
        """The schema's verdict (raises ValidationError)."""
        req = self.model.model_validate_json(body)   # parsed and validated in one pass by pydantic-core
        return req.user_id, req.candidates, req.k, req.recent

    def authorized(self, header: str) -> bool:
        if not self.token:
            return True
        scheme, _, value = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self.token)

    async def __call__(self, body: bytes, authorization: str) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        if not self.authorized(authorization):
            return 401, _detail("missing or invalid bearer token"), [(b"www-authenticate", b"Bearer")]
        fast = self.parse(body)
        try:
            req = fast if fast is not None else self.validate(body)
            try:
                out = await self.batcher.rank(*req)
            except (InvalidCandidates, NotReady):
                if fast is not None:
                    self.validate(body)     # the schema's verdict comes first, as without the fast path
                raise
        except ValidationError as e:
            detail = e.errors(include_url=False, include_input=False, include_context=False)  # JSON-safe, no echo
            return 422, orjson.dumps({"detail": detail}), []
        except InvalidCandidates as e:
            return 422, _detail(str(e)), []
        except NotReady as e:
            return 503, _detail(str(e)), []
        except BadRankRequest as e:
            return 400, _detail(str(e)), []
        return 200, orjson.dumps(out), []


def _detail(message: str) -> bytes:
    return orjson.dumps({"detail": message})


class LimitsAndMetrics:
    """The outermost ASGI layer: refuses bodies over ``max_bytes`` (413), records latency and
    status, and answers ``POST /rank`` itself through ``rank`` (no framework layer on the hot
    path); every other request goes on to ``app`` (the FastAPI application, also at ``.api``)."""

    def __init__(self, app, max_bytes: int, rank: Optional[RankHandler] = None) -> None:
        self.app = self.api = app
        self.max_bytes = max_bytes
        self.rank = rank
        self._seconds = {r: M.SERVING_REQUEST_SECONDS.labels(r) for r in M.SERVING_ROUTES}
        self._requests: dict[tuple[str, int], Any] = {}

    def _count(self, route: str, status: int) -> None:
        child = self._requests.get((route, status))
        if child is None:
            child = self._requests[(route, status)] = M.SERVING_REQUESTS.labels(route, str(status))
        child.inc()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        route = scope["path"] if scope["path"] in self._seconds else "other"
        if self.rank is not None and route == "/rank" and scope["method"] == "POST":
            await self._rank(scope, receive, send, t0)
            return
        status = [500]

        async def send_status(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                self._seconds[route].observe(time.perf_counter() - t0)
            await send(message)

        try:
            body = await self._read_body(scope, receive)
            if body is None:
                await _too_large(send_status, self.max_bytes)
                return
            replayed = [False]

            async def replay():
                if not replayed[0]:
                    replayed[0] = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send_status)
        finally:
            self._count(route, status[0])

    async def _rank(self, scope, receive, send, t0: float) -> None:
        code = 500
        try:
            body = await self._read_body(scope, receive)
            if body is None:
                code, payload, headers = 413, _detail(f"request body larger than {self.max_bytes} bytes"), []
            else:
                auth = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), "")
                code, payload, headers = await self.rank(body, auth)
            self._seconds["/rank"].observe(time.perf_counter() - t0)
            await _respond(send, code, payload, headers)
        finally:
            self._count("/rank", code)

    async def _read_body(self, scope, receive) -> bytes | None:
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    if int(value) > self.max_bytes:
                        return None
                except ValueError:
                    pass
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return None
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)


async def _too_large(send, limit: int) -> None:
    await _respond(send, 413, _detail(f"request body larger than {limit} bytes"), [])


async def _respond(send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


def create_app(ranker: Ranker, settings: Settings, on_close: Optional[Callable[[], None]] = None) -> LimitsAndMetrics:
    """The ASGI application serving ``ranker`` (the FastAPI application behind the limits and
    metrics layer, at ``.api``); ``on_close`` runs at shutdown."""
    handler = RankHandler(ranker, settings)

    async def authorize(request: Request) -> None:  # async: no thread-pool hop per request
        if not handler.authorized(request.headers.get("authorization", "")):
            raise _Unauthorized()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        if on_close is not None:
            on_close()

    app = FastAPI(title="streamrl ranking service", version="1", lifespan=lifespan,
                  description="Ranks feed candidates with the newest verified policy snapshot; "
                              "explores with exact per-position propensities.")
    guarded = [Depends(authorize)]

    @app.exception_handler(_Unauthorized)
    async def _unauthorized(request: Request, exc: Exception) -> Response:
        return JSONResponse({"detail": "missing or invalid bearer token"}, status_code=401,
                            headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(NotReady)
    async def _not_ready(request: Request, exc: Exception) -> Response:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(BadRankRequest)
    async def _bad_request(request: Request, exc: Exception) -> Response:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.get("/healthz", summary="Liveness: the process answers.")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: a verified policy is loaded (503 otherwise).",
             responses={503: {"description": "no verified policy loaded yet"}})
    async def readyz() -> dict[str, Any]:
        if ranker.policy is None:
            raise NotReady("no verified policy loaded yet")
        return {"status": "ready", "policy_version": ranker.version}

    @app.get("/policy", summary="Version and metadata of the served policy.", dependencies=guarded,
             responses={401: {"description": "bearer token required"}, 503: {"description": "no policy yet"}})
    async def policy() -> dict[str, Any]:
        p = ranker.policy
        if p is None:
            raise NotReady("no verified policy loaded yet")
        out = p.describe()
        out["feedback"] = ranker.feedback.describe() if ranker.feedback is not None else None
        return out

    @app.get("/metrics", summary="Prometheus metrics of this process.", dependencies=guarded,
             response_class=Response, responses={401: {"description": "bearer token required"}})
    async def metrics() -> Response:
        if ranker.feedback is not None:
            ranker.feedback.sync_metrics()
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    rank_schema = handler.model.model_json_schema()

    @app.post("/rank", summary="Rank candidates for a user.", response_model=RankResponse,
              openapi_extra={"requestBody": {"required": True,
                                             "content": {"application/json": {"schema": rank_schema}}}},
              responses={400: {"description": "duplicate candidates"}, 401: {"description": "bearer token required"},
                         413: {"description": "body too large"}, 422: {"description": "request does not match the schema"},
                         503: {"description": "no policy yet"}})
    async def rank(request: Request) -> Response:
        """Documents /rank; requests are answered by the same handler straight from the middleware."""
        code, payload, headers = await handler(await request.body(), request.headers.get("authorization", ""))
        return Response(payload, status_code=code, media_type="application/json",
                        headers={k.decode(): v.decode() for k, v in headers})

    return LimitsAndMetrics(app, settings.serve_max_body_bytes, rank=handler)


class _Unauthorized(Exception):
    """Raised by the auth dependency; answered 401 at the edge."""
