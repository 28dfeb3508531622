"""The Ray Serve application: HTTP endpoints over ``serving.recommender``.

    serve run infra/serve.yaml                                    # the config file
    serve run serving.app:build_app model=runs/demo               # a run folder
    serve run serving.app:build_app model=models:/demo-hstu@champion \\
        tracking_uri=sqlite:///runs/mlflow.db

Routes: POST /recommend, POST /rank, GET /healthz, GET /model, POST /admin/reload.
Bad requests get a 4xx with a message (422 for bad fields or unknown ids, 413
for an oversized body, 401 for a missing API key) and never reach the model.

Swapping the model never fails a request: a new model is loaded off the event
loop and swapped in with one assignment; requests already running finish on
the model they started with. Three ways to swap, by scale:
  - ``POST /admin/reload`` (this replica; fine for one replica),
  - ``watch_alias_s``: every replica follows the registry alias on its own,
  - a new ``user_config`` in ``serve deploy``: Serve calls ``reconfigure`` on every replica.
"""

import asyncio
import json
import logging
import os
import secrets

import torch
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field
from ray import serve

from .loading import ModelNotFound, load_bundle, parse_registry_uri
from .recommender import InvalidRequest, Query, Recommender
from .schemas import (
    MAX_BODY_BYTES,
    RankRequest,
    RankResponse,
    RecommendRequest,
    RecommendResponse,
    ReloadRequest,
)

logger = logging.getLogger("ray.serve")
API_KEY_HEADER = "x-api-key"
OPEN_PATHS = {"/healthz"}  # load balancers probe it without credentials

app = FastAPI(
    title="genrec recommender",
    description="Top-k retrieval and candidate ranking with HSTU / SASRec models.",
)


class ServiceArgs(BaseModel):
    """Arguments of ``build_app`` (``serve run serving.app:build_app key=value`` or YAML args)."""

    model: str = Field(description="models:/NAME@ALIAS, models:/NAME/VERSION or a run folder")
    tracking_uri: str | None = None
    # Name of an environment variable holding the API key; unset or empty: no key needed.
    api_key_env: str | None = None
    max_batch_size: int = Field(default=32, ge=1)  # 1 turns dynamic batching off
    batch_wait_timeout_s: float = Field(default=0.002, ge=0)
    rank_micro_batch: int = Field(default=256, ge=1)
    # >0: every replica re-reads the registry alias this often and swaps on a new version.
    watch_alias_s: float = Field(default=0, ge=0)
    # Intra-op threads per replica: scale with replicas, not threads, on small machines.
    torch_threads: int = Field(default=1, ge=1)


class _Guard:
    """ASGI middleware: API key and body-size checks before anything parses the request.

    Pure ASGI rather than a FastAPI ``http`` middleware so that the body is read once,
    bounded even when chunked (no Content-Length), and replayed to the app.
    """

    api_key: str | None = None  # set by the deployment from its environment

    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        headers = {
            key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]
        }
        # Under a route prefix, Serve hands over the full path: compare what follows it.
        path, prefix = scope["path"], scope.get("root_path", "")
        route = path[len(prefix) :] if prefix and path.startswith(prefix) else path
        needs_key = self.api_key and route not in OPEN_PATHS
        if needs_key and not secrets.compare_digest(headers.get(API_KEY_HEADER, ""), self.api_key):
            detail = f"missing or wrong API key: send it in the {API_KEY_HEADER} header"
            return await _reply(send, 401, detail)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return await _reply(send, 413, _TOO_LARGE)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_BODY_BYTES:
                return await _reply(send, 413, _TOO_LARGE)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.inner(scope, replay, send)


_TOO_LARGE = f"request body over {MAX_BODY_BYTES} bytes; send a shorter history"


async def _reply(send, status: int, detail: str) -> None:
    payload = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


app.add_middleware(_Guard)


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 1})
@serve.ingress(app)
class RecommenderService:
    def __init__(self, args: dict):
        self.args = ServiceArgs(**args)
        torch.set_num_threads(self.args.torch_threads)
        _Guard.api_key = os.environ.get(self.args.api_key_env or "", "") or None
        self.source = self.args.model
        self.recommender = Recommender(
            load_bundle(self.source, self.args.tracking_uri), self.args.rank_micro_batch
        )
        self._swap_lock = asyncio.Lock()
        self._batched_recommend.set_max_batch_size(self.args.max_batch_size)
        self._batched_recommend.set_batch_wait_timeout_s(self.args.batch_wait_timeout_s)
        self._watcher = None
        if self.args.watch_alias_s > 0 and parse_registry_uri(self.source):
            self._watcher = asyncio.get_event_loop().create_task(self._watch_alias())
        logger.info("serving %s", self.recommender.info)

    # ------------------------------------------------------------------ model swaps

    async def _swap(self, source: str) -> dict:
        async with self._swap_lock:  # two reloads at once would race on the assignment order
            bundle = await asyncio.to_thread(load_bundle, source, self.args.tracking_uri)
            recommender = await asyncio.to_thread(Recommender, bundle, self.args.rank_micro_batch)
            previous, self.recommender, self.source = self.recommender.info, recommender, source
        logger.info("swapped %s -> %s", previous.get("source"), recommender.info.get("source"))
        return recommender.info

    async def reconfigure(self, user_config: dict) -> None:
        """``serve deploy`` with ``user_config: {model: ..., tracking_uri: ...}``; every replica."""
        if "tracking_uri" in user_config:
            self.args.tracking_uri = user_config["tracking_uri"]
        if user_config.get("model"):
            await self._swap(user_config["model"])

    async def _watch_alias(self) -> None:
        while True:
            await asyncio.sleep(self.args.watch_alias_s)
            name, alias, _ = parse_registry_uri(self.source)
            try:
                latest = await asyncio.to_thread(self._alias_version, name, alias)
                if alias and latest != self.recommender.version:
                    await self._swap(self.source)
            except Exception:  # a registry hiccup must not stop serving or the watcher
                logger.exception("alias watch failed; keeping the current model")

    def _alias_version(self, name: str, alias: str | None) -> str | None:
        from mlflow.tracking import MlflowClient

        if alias is None:
            return self.recommender.version
        return str(
            MlflowClient(self.args.tracking_uri).get_model_version_by_alias(name, alias).version
        )

    @app.post("/admin/reload")
    async def reload(self, request: ReloadRequest | None = None) -> dict:
        """Load the model again (an alias may point elsewhere now), or another source."""
        source = (request.source if request else None) or self.source
        try:
            info = await self._swap(source)
        except (ModelNotFound, FileNotFoundError, ValueError) as error:
            raise HTTPException(status_code=422, detail=str(error)) from error
        return {"serving": info}

    # ------------------------------------------------------------------ routes

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "model_version": self.recommender.version}

    @app.get("/model")
    async def model_info(self) -> dict:
        return self.recommender.info

    @app.post("/recommend", response_model=RecommendResponse)
    async def recommend(self, request: RecommendRequest) -> RecommendResponse:
        query = Query(request.history, request.timestamps, request.k, request.exclude_history)
        if self.args.max_batch_size > 1:
            result, version = await self._batched_recommend(query)
        else:
            recommender = self.recommender
            result, version = recommender.recommend([query])[0], recommender.version
        if isinstance(result, Exception):
            raise HTTPException(status_code=422, detail=str(result))
        items, scores = result
        return RecommendResponse(items=items, scores=scores, model_version=version)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def _batched_recommend(self, queries: list[Query]) -> list:
        recommender = self.recommender  # one model for the whole batch, even mid-swap
        return [(result, recommender.version) for result in recommender.recommend(queries)]

    @app.post("/rank", response_model=RankResponse)
    def rank(self, request: RankRequest) -> RankResponse:
        # A plain def: FastAPI runs it in a worker thread, so ranking never blocks /healthz.
        recommender = self.recommender
        try:
            scores, method = recommender.rank(
                request.history, request.candidates, request.timestamps, request.candidate_timestamp
            )
        except InvalidRequest as error:
            raise HTTPException(status_code=422, detail=str(error)) from error
        return RankResponse(scores=scores, method=method, model_version=recommender.version)


def build_app(args: dict):
    """Application builder for ``serve run`` / ``serve deploy`` (``import_path: serving.app:build_app``)."""
    checked = ServiceArgs(**args)  # fail in the CLI, with the field named, not in a replica
    return RecommenderService.bind(checked.model_dump())
