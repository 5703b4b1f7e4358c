"""GET /metrics with the official Prometheus parser (prometheus_client): request counters by route, dialect, model
and status; latency and stream first-byte histograms; loads; runner and device gauges; the engine's own metrics
relabelled with the model."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def scrape(sup) -> dict[str, list]:
    r = sup.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4"), r.text[:300]
    families = {f.name: f.samples for f in text_string_to_metric_families(r.text)}
    return families


def value(samples, name: str, **labels) -> float:
    found = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, [s for s in samples if s.name == name])
    return found[0]


def test_requests_loads_gauges_and_engine_metrics(sup):
    assert sup.chat(max_tokens=3).status_code == 200
    assert sup.chat(prefix="/v1", max_tokens=3).status_code == 200
    stream = sup.stream("/engines/v1/chat/completions",
                        {"model": "ai/tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
                         "stream": True})
    assert stream.rest()[-1] == "[DONE]"
    assert sup.post("/api/chat", {"model": "ai/tiny", "messages": [{"role": "user", "content": "hi"}],
                                  "stream": False, "options": {"num_predict": 2}}).status_code == 200
    assert sup.chat(model="ai/nope").status_code == 404

    m = scrape(sup)
    req = m["dmr_requests"]
    model = "ai/tiny:latest"
    assert value(req, "dmr_requests_total", route="/v1/chat/completions", dialect="openai", model=model,
                 status="200") == 3
    assert value(req, "dmr_requests_total", route="/api/chat", dialect="ollama", model=model, status="200") == 1
    assert value(req, "dmr_requests_total", route="/v1/chat/completions", dialect="openai", model="",
                 status="404") == 1
    lat = m["dmr_request_duration_seconds"]
    assert value(lat, "dmr_request_duration_seconds_count", route="/v1/chat/completions", dialect="openai") == 4
    first = m["dmr_stream_first_byte_seconds"]
    assert value(first, "dmr_stream_first_byte_seconds_count", route="/v1/chat/completions", dialect="openai") == 1
    assert value(m["dmr_model_loads"], "dmr_model_loads_total", model=model, result="ok") == 1
    assert value(m["dmr_model_load_seconds"], "dmr_model_load_seconds_count", model=model) == 1
    assert value(m["dmr_runners"], "dmr_runners", state="loaded") == 1
    assert value(m["dmr_runner_memory_predicted_bytes"], "dmr_runner_memory_predicted_bytes", model=model,
                 mode="completion") > 16 << 20
    assert value(m["dmr_device_memory_bytes"], "dmr_device_memory_bytes", device="0", kind="total") > 0
    # llama-server's own counters, relabelled: 3 + 3 + 3 + 2 tokens predicted by this engine.
    predicted = m["llamacpp:tokens_predicted"]
    assert value(predicted, "llamacpp:tokens_predicted_total", model=model, mode="completion") == 11


def test_evictions_are_counted(supervisors, tmp_path):
    sup = supervisors.start(models=[supervisors.tiny_model(), supervisors.other_tiny_model()],
                            scheduler={"memory_budget": "30MiB", "memory_reserve": 0})
    for model in ("ai/tiny", "ai/tiny2"):
        assert sup.chat(model=model, max_tokens=2).status_code == 200
    m = scrape(sup)
    assert value(m["dmr_evictions"], "dmr_evictions_total", model="ai/tiny:latest") == 1
    assert value(m["dmr_runners"], "dmr_runners", state="loaded") == 1
