"""GET /metrics with the official Prometheus parser (prometheus_client): request counters by route, dialect, model
and status; latency and stream first-byte histograms; loads; runner and device gauges; the engine's own metrics
relabelled with the model."""

from __future__ import annotations

import json
import threading

import requests

from prometheus_client.parser import text_string_to_metric_families

from harness import wait_until


def scrape(sup) -> dict[str, list]:
    r = sup.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4"), r.text[:300]
    families = {f.name: f.samples for f in text_string_to_metric_families(r.text)}
    return families


def value(samples, name: str, **labels) -> float:
    found = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, [s for s in samples if s.name == name])
    return found[0]


def total(samples, name: str) -> float:
    """The node's figure: the sample without labels."""
    found = [s.value for s in samples if s.name == name and not s.labels]
    assert len(found) == 1, (name, [s for s in samples if s.name == name])
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


def test_router_load_series_and_orca_report_follow_the_requests(supervisors):
    """The vLLM-named series cluster routers read (vLLM Router, llm-d's endpoint picker, AIBrix), and vLLM's ORCA
    header: a long stream running and a second request waiting for the one slot (`max_in_flight = 1`) show up as
    1 running, 1 waiting and a KV cache in use; both go back to 0 when they end."""
    sup = supervisors.start(models=[supervisors.tiny_model(context_size=8192)], scheduler={"max_in_flight": 1})
    model = "ai/tiny:latest"
    idle = scrape(sup)
    assert total(idle["vllm:num_requests_running"], "vllm:num_requests_running") == 0
    assert not [s for s in idle["vllm:num_requests_running"] if s.labels], "no model loaded: only the node total"
    assert value(idle["vllm:lora_requests_info"], "vllm:lora_requests_info", max_lora="0") > 1.7e9

    s = sup.stream("/engines/v1/chat/completions",
                   {"model": "ai/tiny", "stream": True, "max_tokens": 8000, "ignore_eos": True,
                    "messages": [{"role": "user", "content": "Hello"}]}, timeout=60)
    waiter = threading.Thread(target=lambda: sup.chat(max_tokens=2))
    try:
        assert s.status == 200 and s.next_data() not in (None, "[DONE]")
        waiter.start()
        wait_until(lambda: total(scrape(sup)["vllm:num_requests_waiting"], "vllm:num_requests_waiting") == 1,
                   10.0, "the second request to wait for the slot")
        busy = scrape(sup)
        for name in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
            assert total(busy[name], name) == 1, name
            assert value(busy[name], name, model_name=model) == 1, name
        for name in ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"):
            kv = value(busy[name], name, model_name=model)
            assert 0 < kv < 1, (name, kv)  # the stream's prompt and tokens so far, over 8192 cells
            assert total(busy[name], name) == kv, "the node's figure is its fullest cache"
        assert value(busy["vllm:cache_config_info"], "vllm:cache_config_info", model_name=model,
                     num_gpu_blocks="512", block_size="16") == 1
        # vLLM Router's power_of_two reads running + waiting, without an API key.
        assert requests.get(sup.url("/get_load"), timeout=5).json() == {"load": 2}
        text = sup.get("/engines/ps", headers={"endpoint-load-metrics-format": "text"})
        report = text.headers["endpoint-load-metrics"]
        assert report.startswith("TEXT "), report
        fields = dict(f.split("=") for f in report[5:].split(", "))
        assert float(fields["named_metrics.num_requests_running"]) == 1.0, report
        assert float(fields["named_metrics.num_requests_waiting"]) == 1.0, report
        assert 0 < float(fields["named_metrics.kv_cache_usage_perc"]) < 1, report
        js = sup.get("/engines/ps", headers={"endpoint-load-metrics-format": "JSON"}).headers["endpoint-load-metrics"]
        assert js.startswith("JSON ") and json.loads(js[5:])["named_metrics"]["num_requests_running"] == 1.0, js
    finally:
        s.close()
        waiter.join(60)
    wait_until(lambda: total(scrape(sup)["vllm:num_requests_running"], "vllm:num_requests_running") == 0, 10.0,
               "running to go back to 0")
    after = scrape(sup)
    assert value(after["vllm:num_requests_waiting"], "vllm:num_requests_waiting", model_name=model) == 0
    assert value(after["vllm:kv_cache_usage_perc"], "vllm:kv_cache_usage_perc", model_name=model) == 0
    assert "endpoint-load-metrics" not in sup.get("/engines/ps").headers, "only when asked"
    assert sup.get("/get_load").json() == {"load": 0}
