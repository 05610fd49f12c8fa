"""The search web app: one self-contained page, a small JSON API and on-demand thumbnails.

Routes:
  GET  /                         the page (inline CSS and JS, no outside assets)
  GET  /api/search?q=TEXT&k=K    text -> image search (&dedup=1: one hit per near-duplicate
                                 cluster, its representative, with `duplicates` = the others)
  GET  /api/search?image_id=ID   image -> image search with an indexed image
  POST /api/search?k=K           image -> image search with an uploaded image (multipart `image`)
  GET  /thumb/{image_id}         JPEG thumbnail of an indexed image: the run's stored one
                                 (--save-thumbnails), else made from the indexed uri (a file,
                                 any fsspec URL, or a tar member `<tar url>#<member>`)
  GET  /api/duplicates?offset&limit  the clusters `vlpipe dedup` found, biggest first
                                 (vlpipe.serve.duplicates)
  GET  /api/ask?q=QUESTION&k=K   the run's prompted captioner answers QUESTION about each of
                                 the top-k hits of a search for &about=TEXT (default: the
                                 question); &where= filters; same limits as search

Safety: images are served by image_id only, and only ids the index knows; no request ever names
a path that gets opened. Queries, k and uploads are bounded, uploads go through the pipeline's
guarded decoder, a Host check keeps DNS-rebinding pages out when serving on loopback, and every
error is a JSON object {"error": ...} with its status code, never a traceback.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from importlib import resources

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from vlpipe.errors import VlpipeError
from vlpipe.images.thumbnails import ThumbnailError
from vlpipe.reading.sources import read_source
from vlpipe.search.ask import answer_columns
from vlpipe.search.results import jsonable
from vlpipe.serve.duplicates import duplicates_route
from vlpipe.serve.signals import signal_columns
from vlpipe.serve.stored import StoredThumbnails
from vlpipe.serve.thumbnails import SAFE_ID, ThumbnailCache

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
PAGE_CSP = (
    "default-src 'none'; img-src 'self' blob:; style-src 'unsafe-inline'; "
    "script-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


@dataclass(frozen=True)
class Limits:
    max_query_chars: int = 500
    max_k: int = 100
    default_k: int = 24
    max_upload_bytes: int = 10 * 1024 * 1024
    #: shortest side the guarded decoder keeps (JPEG draft) for query images: enough for the
    #: input size of common embedders (224-384 px), and big photos still decode fast
    decode_min_side: int = 384


class SearchService:
    """The searcher behind a lock (one model, one query at a time), the thumbnail cache and the
    run's stored thumbnails (None when it has none)."""

    def __init__(self, searcher, thumbs: ThumbnailCache, limits: Limits):
        self.searcher = searcher
        self.thumbs = thumbs
        self.limits = limits
        self.stored = StoredThumbnails.of(searcher)
        self._lock = threading.Lock()
        self.ask_model: str | None = None  # None: the run's captioner, when it is prompted
        self._asker = None
        self.answer_columns = tuple(answer_columns(searcher))  # the run's --ask columns
        self.signal_columns = signal_columns(searcher)  # quality signals and --score columns

    def by_text(self, query: str, k: int, opts: Options | None = None) -> list:
        opts = opts or Options()
        with self._lock:
            hits = self.searcher.search_text(
                [query], self._k(opts.offset + k), mode=opts.mode, where=opts.where,
                **opts.extra,
            )[0]  # fmt: skip
            return self._page(hits, opts)

    def ask(self, question: str, about: str | None, k: int, where: str | None) -> list:
        """Answers (vlpipe.search.ask) about the top-k hits, one question at a time."""
        from vlpipe.search.ask import Asker, run_captioner

        with self._lock:
            if self._asker is None:
                model = self.ask_model or run_captioner(self.searcher)
                self._asker = Asker(self.searcher, model, self.searcher.device)
            return self._asker.about_hits(question, about, self._k(k), where)

    def _page(self, hits: list, opts: Options) -> list:
        """The page of hits asked for, with the columns and embeddings asked for."""
        hits = hits[opts.offset :]
        columns = [*opts.columns, *self.answer_columns, *self.signal_columns]
        columns = list(dict.fromkeys(columns))
        if columns or opts.embeddings:
            from vlpipe.search.results import attach

            attach(self.searcher.rows(), [hits], columns, opts.embeddings)
        return hits

    def by_image(self, data: bytes, k: int, opts: Options | None = None) -> list:
        from vlpipe.images.decode import DecodeError, decode_image

        try:
            image = decode_image(data, self.limits.decode_min_side).image
        except DecodeError as exc:
            raise HTTPException(422, f"cannot decode the image: {exc}") from None
        opts = opts or Options()
        with self._lock:
            hits = self.searcher.search_image(
                [image], self._k(opts.offset + k), where=opts.where, **opts.extra
            )
            return self._page(hits[0], opts)

    def by_indexed_image(self, image_id: str, k: int, opts: Options | None = None) -> list:
        """The source image as the query; the stored thumbnail when the source is gone."""
        uri = self.uri_of(image_id)
        try:
            data = read_source(uri, self.thumbs.max_source_bytes)
        except ThumbnailError as exc:
            data = self._stored(image_id) if exc.missing else None
            if data is None:
                raise HTTPException(404 if exc.missing else 422, str(exc)) from None
        return self.by_image(data, k, opts)

    def _k(self, k: int) -> int:
        """Never more results than the index holds."""
        return max(1, min(k, self.searcher.size))

    def uri_of(self, image_id: str) -> str:
        uri = self.searcher.uri_of(image_id) if SAFE_ID.match(image_id) else None
        if uri is None:
            raise HTTPException(404, "no such image in the index")
        return uri

    def thumbnail(self, image_id: str) -> bytes:
        uri = self.uri_of(image_id)
        try:
            return self.thumbs.get(image_id, uri, lambda: self._stored(image_id))
        except ThumbnailError as exc:
            raise HTTPException(404 if exc.missing else 422, str(exc)) from None

    def _stored(self, image_id: str) -> bytes | None:
        """The run's own thumbnail of an indexed image (read only on a cache miss)."""
        if self.stored is None:
            return None
        row = self.searcher.row_of(image_id)
        return None if row is None else self.stored.get(row)


def _hit_json(hit) -> dict:
    out = {
        "rank": int(hit.rank),
        "score": round(float(hit.score), 4),
        "image_id": hit.image_id,
        "uri": hit.uri,
        "caption": hit.caption,
        "found_by": getattr(hit, "found_by", "vector"),
        "thumb": f"/thumb/{hit.image_id}",
    }
    if getattr(hit, "duplicates", None) is not None:
        out["duplicates"] = int(hit.duplicates)
    if getattr(hit, "columns", None) is not None:
        out["columns"] = {k: jsonable(v) for k, v in hit.columns.items()}
    if getattr(hit, "embedding", None) is not None:
        out["embedding"] = [float(x) for x in hit.embedding]
    return out


@dataclass(frozen=True)
class Options:
    """What a search asks for besides the query: a filter, a ranking mode, a page, extras."""

    where: str | None = None
    mode: str | None = None
    columns: tuple[str, ...] = ()
    embeddings: bool = False
    offset: int = 0
    dedup: bool = False  # one hit per near-duplicate cluster (needs `vlpipe dedup`)

    @property
    def extra(self) -> dict:
        """Keywords for the searcher beyond the basic ones, only when asked for: a searcher
        that does not know them still answers plain searches."""
        return {"dedup": True} if self.dedup else {}


def _parse_options(request: Request, k: int) -> Options:
    from vlpipe.search.results import MAX_K_OUT

    params = request.query_params
    try:
        offset = int(params.get("offset", "0"))
    except ValueError:
        raise HTTPException(400, "offset must be a whole number") from None
    if not 0 <= offset or offset + k > MAX_K_OUT:
        raise HTTPException(400, f"offset must be 0 or more, and offset + k at most {MAX_K_OUT}")
    mode = params.get("mode") or None
    if mode not in (None, "vector", "keyword", "hybrid"):
        raise HTTPException(400, "mode must be vector, keyword or hybrid")
    columns = tuple(c.strip() for c in params.get("columns", "").split(",") if c.strip())
    embeddings = _flag(params.get("embeddings", "0"))
    where = params.get("where", "").strip() or None
    return Options(where, mode, columns, embeddings, offset, _flag(params.get("dedup", "0")))


def _flag(value: str) -> bool:
    return value.lower() in ("1", "true", "yes")


def _parse_k(request: Request, limits: Limits) -> int:
    raw = request.query_params.get("k", str(limits.default_k))
    try:
        k = int(raw)
    except ValueError:
        raise HTTPException(400, "k must be a whole number") from None
    if not 1 <= k <= limits.max_k:
        raise HTTPException(400, f"k must be between 1 and {limits.max_k}")
    return k


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to be over `limit`."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"upload over the {limit // 2**20} MB limit")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"upload over the {limit // 2**20} MB limit")
    return bytes(body)


async def _uploaded_image(request: Request, limits: Limits) -> bytes:
    # Multipart framing adds a few hundred bytes to the file itself.
    body = await _read_body(request, limits.max_upload_bytes + 64 * 1024)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise HTTPException(415, "send the image as multipart/form-data in a field named 'image'")

    async def once():
        yield body

    try:
        form = await MultiPartParser(request.headers, once(), max_files=1, max_fields=8).parse()
    except MultiPartException as exc:
        raise HTTPException(400, f"bad multipart upload: {exc.message}") from None
    upload = form.get("image")
    if upload is None or isinstance(upload, str):
        raise HTTPException(400, "no file in the 'image' field")
    data = await upload.read()
    if len(data) > limits.max_upload_bytes:
        raise HTTPException(413, f"upload over the {limits.max_upload_bytes // 2**20} MB limit")
    if not data:
        raise HTTPException(400, "the uploaded file is empty")
    return data


def create_app(searcher, thumbs: ThumbnailCache, limits: Limits | None = None, *,
               allowed_hosts: set[str] | None = None,
               ask_model: str | None = None) -> Starlette:  # fmt: skip
    """The ASGI app over an open Searcher. `allowed_hosts` None accepts any Host header;
    `ask_model` answers /api/ask (None: the run's captioner, when it is prompted)."""
    limits = limits or Limits()
    service = SearchService(searcher, thumbs, limits)
    service.ask_model = ask_model
    page = resources.files("vlpipe.serve").joinpath("static/index.html").read_text("utf-8")

    async def index(request: Request) -> Response:
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_CSP})

    async def search_get(request: Request) -> Response:
        k = _parse_k(request, limits)
        opts = _parse_options(request, k)
        page = {"k": k, "offset": opts.offset, "where": opts.where}
        image_id = request.query_params.get("image_id")
        if image_id is not None:
            hits = await run_in_threadpool(service.by_indexed_image, image_id, k, opts)
            return JSONResponse({"image_id": image_id, **page, "results": _hits(hits)})
        query = request.query_params.get("q", "").strip()
        if not query:
            raise HTTPException(400, "give a query: /api/search?q=...")
        if len(query) > limits.max_query_chars:
            raise HTTPException(400, f"query over {limits.max_query_chars} characters")
        hits = await run_in_threadpool(service.by_text, query, k, opts)
        return JSONResponse({"query": query, **page, "results": _hits(hits)})

    async def search_post(request: Request) -> Response:
        k = _parse_k(request, limits)
        opts = _parse_options(request, k)
        data = await _uploaded_image(request, limits)
        hits = await run_in_threadpool(service.by_image, data, k, opts)
        return JSONResponse({"k": k, "offset": opts.offset, "results": _hits(hits)})

    async def ask(request: Request) -> Response:
        k = _parse_k(request, limits)
        params = request.query_params
        question, about = params.get("q", "").strip(), params.get("about", "").strip() or None
        if not question:
            raise HTTPException(400, "give a question: /api/ask?q=...")
        if max(len(question), len(about or "")) > limits.max_query_chars:
            raise HTTPException(400, f"question or about over {limits.max_query_chars} characters")
        where = params.get("where", "").strip() or None
        answers = await run_in_threadpool(service.ask, question, about, k, where)
        results = [
            {**(_hit_json(a.hit) if a.hit is not None else {"uri": a.uri}),
             "answer": a.answer, **({"error": a.error} if a.error else {})}
            for a in answers
        ]  # fmt: skip
        return JSONResponse({"question": question, "about": about, "k": k, "results": results})

    async def thumb(request: Request) -> Response:
        image_id = request.path_params["image_id"]
        data = await run_in_threadpool(service.thumbnail, image_id)
        etag = '"' + hashlib.sha1(data).hexdigest()[:20] + '"'
        headers = {"ETag": etag, "Cache-Control": "public, max-age=86400"}
        if etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return Response(data, media_type="image/jpeg", headers=headers)

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/api/search", search_get, methods=["GET"]),
            Route("/api/search", search_post, methods=["POST"]),
            Route("/api/ask", ask, methods=["GET"]),
            Route("/thumb/{image_id}", thumb),
            duplicates_route(searcher),
        ],
        exception_handlers={
            HTTPException: _http_error,
            VlpipeError: _user_error,
            Exception: _server_error,
        },
    )
    app.add_middleware(_HeadersMiddleware, allowed_hosts=allowed_hosts)
    return app


def _hits(hits: list) -> list[dict]:
    return [_hit_json(h) for h in hits]


async def _http_error(request: Request, exc: HTTPException) -> Response:
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _user_error(request: Request, exc: VlpipeError) -> Response:
    return JSONResponse({"error": str(exc)}, status_code=400)


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("error serving %s", request.url.path)
    return JSONResponse({"error": "internal error"}, status_code=500)


class _HeadersMiddleware:
    """Rejects foreign Host headers (DNS rebinding) and adds nosniff to every response."""

    def __init__(self, app, allowed_hosts: set[str] | None):
        self.app = app
        self.allowed = allowed_hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.allowed is not None and _host(scope) not in self.allowed:
            response = JSONResponse({"error": "unexpected Host header"}, status_code=400)
            return await response(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-content-type-options", b"nosniff")]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _host(scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"host":
            host = value.decode("latin-1").lower()
            return host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return ""
