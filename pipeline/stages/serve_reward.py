"""``rayppo serve-reward CONFIG``: the configured reward sources over HTTP, so one reward model
(or judge) serves many jobs. The schema is the one the ``http`` source speaks (``docs/rewards.md``).

``POST /score`` takes ``{"samples": [...]}`` and answers ``{"scores": [...], "info": [...]}``:
the weighted total per sample (``null`` = unscorable) and each source's own score in ``info``.
``GET /health`` lists the sources and needs no token.

Safe by default: it binds to 127.0.0.1, and every ``/score`` request must carry
``Authorization: Bearer <token>``; without a configured token the server refuses to start unless
``reward.server.allow_unauthenticated`` is set.
"""

from __future__ import annotations

import hmac
import math
from typing import Any, Optional

from pipeline.config.rewards import RewardServerConfig
from pipeline.rewards import RewardSet
from pipeline.rewards.base import ScoreRequest
from pipeline.rewards.http import token_from


def resolve_token(server: RewardServerConfig) -> Optional[str]:
    """The token clients must send: ``token_file`` if set, else ``$token_env``; ``None`` only
    with ``allow_unauthenticated``."""
    try:
        token = token_from(server.token_env, server.token_file, "reward.server")
    except ValueError:
        if server.token_file:
            raise
        token = None  # the default variable unset: no token, unless unauthenticated is allowed
    if token:
        return token
    if server.allow_unauthenticated:
        return None
    raise ValueError(
        f"reward.server: no token configured (set ${server.token_env} or reward.server.token_file); "
        "set reward.server.allow_unauthenticated=true to serve without one"
    )


class BadSample(ValueError):
    pass


def _sample_fields(index: int, sample: Any) -> tuple[list[dict], str, list[str], Optional[str], dict]:
    where = f"samples[{index}]"
    if not isinstance(sample, dict):
        raise BadSample(f"{where}: expected an object")
    completion = sample.get("completion")
    if not isinstance(completion, str):
        raise BadSample(f"{where}.completion: expected a string")
    messages = sample.get("messages")
    if messages is None:
        prompt = sample.get("prompt")
        if not isinstance(prompt, str):
            raise BadSample(f"{where}: needs 'messages' (a list of {{role, content}}) or 'prompt' (a string)")
        messages = [{"role": "user", "content": prompt}]
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages
    ):
        raise BadSample(f"{where}.messages: expected a list of {{role, content}} objects with string values")
    references = sample.get("references", sample.get("reference"))
    references = [] if references is None else [references] if isinstance(references, str) else references
    if not isinstance(references, list) or not all(isinstance(r, str) for r in references):
        raise BadSample(f"{where}.references: expected a string or a list of strings")
    answer = sample.get("answer")
    if answer is not None and not isinstance(answer, str):
        answer = str(answer)
    metadata = sample.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise BadSample(f"{where}.metadata: expected an object")
    return messages, completion, references, answer, metadata


def parse_samples(body: Any, max_batch: int) -> ScoreRequest:
    """The request body as a :class:`ScoreRequest`; ``BadSample`` naming the bad field."""
    if not isinstance(body, dict) or not isinstance(body.get("samples"), list):
        raise BadSample("the body must be an object with a 'samples' list")
    samples = body["samples"]
    if len(samples) > max_batch:
        raise OverflowError(f"{len(samples)} samples in one request; this server takes at most {max_batch}")
    fields = [_sample_fields(i, s) for i, s in enumerate(samples)]
    return ScoreRequest(
        messages=[f[0] for f in fields],
        completions=[f[1] for f in fields],
        references=[f[2] for f in fields],
        answers=[f[3] for f in fields],
        metadata=[f[4] for f in fields],
    )


def _json_number(value: float) -> Optional[float]:
    return float(value) if math.isfinite(value) else None


def score_body(reward_set: RewardSet, request: ScoreRequest) -> dict:
    """``{"scores": [...], "info": [{source: score}, ...]}`` for a parsed request."""
    if not len(request):
        return {"scores": [], "info": []}
    results = reward_set.collect_results(reward_set.submit(request))
    total = reward_set.total(results)
    info = [
        {source.name: _json_number(result.scores[i]) for source, result in zip(reward_set.sources, results)}
        for i in range(len(request))
    ]
    return {"scores": [_json_number(v) for v in total], "info": info}


def build_app(reward_set: RewardSet, token: Optional[str], max_batch: int):
    from fastapi import Body, FastAPI, Header, HTTPException

    app = FastAPI(title="rayppo reward server")
    sources = [{"name": s.name, "kind": s.kind, "weight": s.weight} for s in reward_set.sources]

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "sources": sources}

    @app.post("/score")
    def score(body: Any = Body(...), authorization: Optional[str] = Header(default=None)) -> dict:
        # A plain ``def``: FastAPI runs it on a worker thread, so requests are scored concurrently.
        if token is not None:
            scheme, _, given = (authorization or "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
                raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
        try:
            request = parse_samples(body, max_batch)
        except OverflowError as e:
            raise HTTPException(413, str(e)) from None
        except BadSample as e:
            raise HTTPException(422, str(e)) from None
        return score_body(reward_set, request)

    return app


def serve(cfg) -> None:
    """Check everything, start the sources' actors (Ray only when a source needs it), serve
    until interrupted, then stop the actors."""
    import uvicorn

    server = cfg.reward.server
    token = resolve_token(server)
    reward_set = RewardSet.from_config(cfg)
    if reward_set.uses_actors:
        from pipeline.controller.ray_setup import init_ray

        init_ray(cfg)
    try:
        reward_set.start(None)  # its own job: the actors take plain resources, no run's group
        app = build_app(reward_set, token, server.max_batch)
        print(
            f"serve-reward: sources {reward_set.names} on http://{server.host}:{server.port}/score"
            + ("" if token else " (no token: unauthenticated)"),
            flush=True,
        )
        uvicorn.run(app, host=server.host, port=server.port, log_level="warning")
    finally:
        reward_set.shutdown()
