"""The Serve app over real HTTP: answers match direct model calls, bad input gets a 4xx."""

from __future__ import annotations

import json

import pytest
import requests
from _serving_tools import deploy, wait_healthy

from serving.loading import load_bundle
from serving.recommender import Query, Recommender
from serving.schemas import MAX_BODY_BYTES, MAX_CANDIDATES, MAX_HISTORY, MAX_K

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def service(serve_http, tiny_run):
    url = f"{serve_http}/tiny"
    deploy("tiny", {"model": str(tiny_run), "max_batch_size": 8}, "/tiny")
    wait_healthy(url)
    return url


@pytest.fixture(scope="module")
def direct(tiny_run):
    return Recommender(load_bundle(str(tiny_run)))


HISTORIES = [[1], [5, 9, 2], list(range(1, 60)), [7, 7, 7, 3]]


def test_recommend_matches_the_model_called_directly(service, direct):
    for history in HISTORIES:
        for exclude in (True, False):
            body = {"history": history, "k": 12, "exclude_history": exclude}
            response = requests.post(f"{service}/recommend", json=body, timeout=30)
            assert response.status_code == 200, response.text
            got = response.json()
            [(items, scores)] = direct.recommend([Query(history, None, 12, exclude)])
            assert got["items"] == items
            assert got["scores"] == pytest.approx(scores, abs=1e-5)
            if exclude:
                assert not set(got["items"]) & set(history)


def test_rank_matches_the_model_and_uses_the_ranking_head(service, direct):
    candidates = [3, 1, 99, 42, 3, 150 - 1]
    response = requests.post(
        f"{service}/rank", json={"history": [4, 8, 15, 16], "candidates": candidates}, timeout=30
    )
    assert response.status_code == 200, response.text
    got = response.json()
    expected, method = direct.rank([4, 8, 15, 16], candidates)
    assert got["method"] == method == "target_aware"
    assert got["scores"] == pytest.approx(expected, abs=1e-5)
    assert got["scores"][0] == pytest.approx(got["scores"][4], abs=1e-6)  # same id, same score


def test_health_and_model_description(service, tiny_run):
    assert requests.get(f"{service}/healthz", timeout=10).json()["status"] == "ok"
    info = requests.get(f"{service}/model", timeout=10).json()
    assert info["family"] == "hstu"
    assert info["dataset"] == "synthetic"
    assert info["source"] == str(tiny_run.resolve())
    assert info["ranking_head"] is True
    assert "test/hr@10" in info["metrics"]


def _bad_requests(direct):
    unknown = direct.num_item_ids + 5
    good = {"history": [1, 2, 3]}
    return [
        ("recommend", {"history": [1, unknown]}, 422, f"unknown item id(s): {unknown}"),
        ("recommend", {"history": [0]}, 422, "unknown item id"),
        ("recommend", {"history": []}, 422, "at least 1 item"),
        ("recommend", {"history": [1] * (MAX_HISTORY + 1)}, 422, f"at most {MAX_HISTORY}"),
        ("recommend", {**good, "k": 0}, 422, "greater than or equal to 1"),
        ("recommend", {**good, "k": MAX_K + 1}, 422, f"less than or equal to {MAX_K}"),
        ("recommend", {"history": ["3"]}, 422, "valid integer"),
        ("recommend", {"history": [2.5]}, 422, "valid integer"),
        ("recommend", {"history": [True]}, 422, "valid integer"),
        ("recommend", {"history": 3}, 422, "valid list"),
        ("recommend", {**good, "k": "ten"}, 422, "valid integer"),
        ("recommend", {**good, "timestamps": [1, 2]}, 422, "timestamps has 2 entries"),
        ("recommend", {**good, "exclude_histroy": False}, 422, "Extra inputs"),
        ("recommend", {}, 422, "Field required"),
        ("rank", {**good, "candidates": []}, 422, "at least 1 item"),
        ("rank", {**good, "candidates": [1] * (MAX_CANDIDATES + 1)}, 422, "at most 2048"),
        ("rank", {**good, "candidates": [unknown]}, 422, "candidates has 1 unknown"),
    ]


def test_a_mixed_stream_of_bad_and_good_requests(service, direct):
    good = {"history": [1, 2, 3], "k": 5}
    expected = requests.post(f"{service}/recommend", json=good, timeout=30).json()
    for route, body, status, message in _bad_requests(direct):
        response = requests.post(f"{service}/{route}", json=body, timeout=30)
        assert response.status_code == status, (body, response.text)
        assert message in response.text, (body, response.text)
        after = requests.post(f"{service}/recommend", json=good, timeout=30)
        assert after.status_code == 200 and after.json() == expected


def test_malformed_and_oversized_bodies(service):
    headers = {"content-type": "application/json"}
    broken = requests.post(f"{service}/recommend", data="{not json", headers=headers, timeout=30)
    assert broken.status_code == 422 and "JSON decode error" in broken.text

    huge = json.dumps({"history": [1] * (MAX_BODY_BYTES // 2)})
    too_big = requests.post(f"{service}/recommend", data=huge, headers=headers, timeout=30)
    assert too_big.status_code == 413 and "request body over" in too_big.text

    def chunks():  # no Content-Length: the server must count
        for _ in range(MAX_BODY_BYTES // 2**15 + 2):
            yield b" " * 2**15

    chunked = requests.post(f"{service}/recommend", data=chunks(), headers=headers, timeout=30)
    assert chunked.status_code == 413

    wrong_type = requests.post(
        f"{service}/recommend", data="history=1", headers={"content-type": "text/plain"}, timeout=30
    )
    assert wrong_type.status_code == 422
    assert requests.post(f"{service}/recommend", json={"history": [1]}, timeout=30).ok


def test_without_dynamic_batching_answers_are_the_same(serve_http, tiny_run, service):
    url = f"{serve_http}/unbatched"
    deploy("unbatched", {"model": str(tiny_run), "max_batch_size": 1}, "/unbatched")
    wait_healthy(url)
    for history in HISTORIES:
        body = {"history": history, "k": 7}
        a = requests.post(f"{url}/recommend", json=body, timeout=30).json()
        b = requests.post(f"{service}/recommend", json=body, timeout=30).json()
        assert a["items"] == b["items"]
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-5)
    from ray import serve

    serve.delete("unbatched")


def test_api_key_when_configured(serve_http, tiny_run):
    url = f"{serve_http}/keyed"
    deploy(
        "keyed",
        {"model": str(tiny_run), "api_key_env": "GENREC_TEST_API_KEY"},
        "/keyed",
        ray_actor_options={"runtime_env": {"env_vars": {"GENREC_TEST_API_KEY": "s3cret"}}},
    )
    wait_healthy(url)  # /healthz stays open for load balancers
    body = {"history": [1, 2]}
    missing = requests.post(f"{url}/recommend", json=body, timeout=30)
    assert missing.status_code == 401 and "x-api-key" in missing.text
    wrong = requests.post(f"{url}/recommend", json=body, headers={"x-api-key": "no"}, timeout=30)
    assert wrong.status_code == 401
    assert requests.get(f"{url}/model", timeout=30).status_code == 401
    right = requests.post(
        f"{url}/recommend", json=body, headers={"x-api-key": "s3cret"}, timeout=30
    )
    assert right.status_code == 200
    from ray import serve

    serve.delete("keyed")
