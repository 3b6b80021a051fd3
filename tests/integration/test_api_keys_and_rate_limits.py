"""API keys (every route guarded, jobs scoped to their key) and rate limits (per key or address,
shared by a deployment's processes, never on health, metrics or docs)."""

from __future__ import annotations

import io

from imgsvc import create_app
from tests.integration.test_api import submit


def test_api_keys_guard_every_route_and_scope_jobs(settings, redis_db, jpeg_bytes):
    app = create_app(settings.with_(api_keys=("alpha", "beta")))
    client = app.test_client()
    refused = submit(client, jpeg_bytes)
    assert refused.status_code == 401
    assert "Authorization: Bearer" in refused.get_json()["error"]["message"]  # says how to send a key
    assert "X-API-Key" in refused.get_json()["error"]["message"]
    assert client.get("/api/v1/jobs", headers={"X-API-Key": "wrong"}).status_code == 401
    alpha = {"Authorization": "Bearer alpha"}
    beta = {"X-API-Key": "beta"}
    job_id = client.post(
        "/api/v1/submit",
        data={"file": (io.BytesIO(jpeg_bytes), "x.jpg")},
        headers=alpha,
        content_type="multipart/form-data",
    ).get_json()["job_id"]
    assert client.get(f"/api/v1/status/{job_id}", headers=alpha).status_code == 200
    assert client.get(f"/api/v1/status/{job_id}", headers=beta).status_code == 404
    assert client.get("/api/v1/jobs", headers=beta).get_json()["jobs"] == []
    assert client.get("/healthz").status_code == 200  # health stays open for probes


def test_rate_limit_answers_429_with_retry_after(settings, redis_db):
    app = create_app(settings.with_(rate_limit="3/minute"))
    client = app.test_client()
    codes = [client.get("/api/v1/status/00000000-0000-0000-0000-000000000000").status_code for _ in range(4)]
    assert codes == [404, 404, 404, 429]
    limited = client.get("/api/v1/jobs")
    assert limited.status_code == 429 and limited.is_json
    assert int(limited.headers["Retry-After"]) > 0
    # Without API_KEYS no key is valid: a made-up one opens no bucket of its own (it did).
    assert client.get("/api/v1/jobs", headers={"X-API-Key": "junk-1234"}).status_code == 429


def test_rate_limit_buckets_are_per_valid_key_and_wrong_keys_use_up_the_address(settings, redis_db):
    app = create_app(settings.with_(rate_limit="3/minute", api_keys=("alpha", "beta")))
    client = app.test_client()
    codes = [client.get("/api/v1/jobs", headers={"X-API-Key": f"guess-{n}"}).status_code for n in range(5)]
    assert codes == [401, 401, 401, 429, 429]  # guessing keys is limited like anything else
    assert client.get("/api/v1/jobs", headers={"Authorization": "Bearer \xc3\xa9"}).status_code == 429
    alpha = [client.get("/api/v1/jobs", headers={"X-API-Key": "alpha"}).status_code for _ in range(4)]
    assert alpha == [200, 200, 200, 429]  # a valid key has a bucket of its own
    assert client.get("/api/v1/jobs", headers={"Authorization": "Bearer beta"}).status_code == 200


def test_every_web_process_of_a_deployment_counts_against_one_limit(settings, redis_db):
    """gunicorn runs several processes: the buckets live in Redis, one set per deployment (RQ_QUEUE)."""
    one, two = (create_app(settings.with_(rate_limit="3/minute")).test_client() for _ in range(2))
    codes = [client.get("/api/v1/jobs").status_code for client in (one, two, one, two)]
    assert codes == [200, 200, 200, 429]
    other = create_app(settings.with_(rate_limit="3/minute", queue_name="other")).test_client()
    assert other.get("/api/v1/jobs").status_code == 200  # another deployment sharing the Redis


def test_a_rate_limit_whose_redis_is_down_lets_requests_through(settings, redis_db):
    """The limiter's store failing is no reason to refuse a request that needs no Redis."""
    app = create_app(settings.with_(rate_limit="2/minute", redis_url="redis://127.0.0.1:1/0"))
    client = app.test_client()
    assert [client.get("/api/v1/jobs").status_code for _ in range(3)] == [200, 200, 200]


def test_health_metrics_and_docs_are_never_rate_limited(settings, redis_db):
    app = create_app(settings.with_(rate_limit="2/minute"))
    client = app.test_client()
    for path in ("/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"):
        codes = [client.get(path).status_code for _ in range(4)]
        assert 429 not in codes, (path, codes)
    assert [client.get("/api/v1/jobs").status_code for _ in range(3)] == [200, 200, 429]
    assert client.get("/healthz").status_code == 200  # still open with the address over its limit
