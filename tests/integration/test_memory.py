"""Memory admission with the real llama-server on CPU: host memory is what is budgeted here (no GPU), and a
`memory_budget` small enough that two tiny engines do not fit together makes the second model evict the first.

The engine is started through a checker script that records, at each engine start, which earlier engines were
still running: the proof that the first was stopped (its process gone) before the second started.
"""

from __future__ import annotations

from pathlib import Path

from harness import assert_openai_error, pid_gone, wait_until

MIB = 1 << 20

CHECKER = """#!/bin/sh
# Appends "PID alive: <earlier engine pids still running>" and becomes the engine (same pid, through the
# harness's wrapper, which logs the spawn).
alive=""
if [ -f {log} ]; then
  while read -r pid rest; do
    if [ -r /proc/$pid/stat ] && [ "$(sed 's/.*) //' /proc/$pid/stat | cut -c1)" != Z ]; then
      alive="$alive $pid"
    fi
  done < {log}
fi
echo "$$ alive:$alive" >> {log}
exec {wrapper} "$@"
"""



def checked_start(supervisors, tmp_path: Path, scheduler: dict, models: list[dict]):
    log = tmp_path / "alive.log"
    name = "memory"
    checker = tmp_path / "checker.sh"
    wrapper = tmp_path / name / "llama-server-wrapper.sh"  # written by write_config below
    checker.write_text(CHECKER.format(log=log, wrapper=wrapper))
    checker.chmod(0o755)
    sup = supervisors.start(name=name, models=models, scheduler=scheduler, engine_binary=str(checker))
    return sup, log


def test_a_small_budget_makes_the_second_model_evict_the_first(supervisors, tmp_path):
    tiny2 = supervisors.other_tiny_model()
    sup, log = checked_start(supervisors, tmp_path, {"memory_budget": "30MiB", "memory_reserve": 0},
                             [supervisors.tiny_model(), tiny2])
    order = ["ai/tiny", "ai/tiny2", "ai/tiny", "ai/tiny2"]
    for i, model in enumerate(order):
        r = sup.chat(model=model, max_tokens=4)
        assert r.status_code == 200, r.text
        [runner] = sup.ps()
        assert runner["model_name"] == model + ":latest", runner
        # Predicted from the GGUF and flags plus llama-server's own footprint: one fits in 30 MiB, two do not.
        assert 16 * MIB <= runner["predicted_memory"] <= 30 * MIB, runner
        spawns = sup.spawns()
        assert len(spawns) == i + 1, spawns
        if i:
            assert pid_gone(spawns[i - 1].pid), f"engine {spawns[i - 1].pid} still running"
    # At each start, no earlier engine was alive: each eviction finished before the next load began.
    lines = log.read_text().splitlines()
    assert len(lines) == 4 and all(line.endswith("alive:") for line in lines), lines
    # The measurement (resident memory here) replaces the prediction, and shows in Ollama's /api/ps.
    runner = wait_until(lambda: (p := sup.ps()) and p[0]["measured_memory"] and p[0], 10.0, "a measurement")
    assert 4 * MIB < runner["measured_memory"] < 200 * MIB, runner
    assert sum(runner["devices"].values()) == runner["measured_memory"], runner
    [ps] = sup.get("/api/ps").json()["models"]
    assert ps["size"] == runner["measured_memory"] and ps["size_vram"] == 0, ps


def test_a_model_that_can_never_fit_gets_507_in_each_dialect(supervisors):
    sup = supervisors.start(scheduler={"memory_budget": "8MiB", "memory_reserve": 0})
    err = assert_openai_error(sup.chat(max_tokens=2), 507, "server_error")
    assert "ai/tiny:latest does not fit in memory: it needs" in err["message"], err
    assert "which can give models at most 8.0 MiB" in err["message"], err

    r = sup.post("/api/chat", {"model": "ai/tiny", "messages": [{"role": "user", "content": "hi"}],
                               "stream": False})
    assert r.status_code == 507 and "does not fit in memory" in r.json()["error"], r.text

    r = sup.post("/v1/messages", {"model": "ai/tiny", "max_tokens": 4,
                                  "messages": [{"role": "user", "content": "hi"}]})
    body = r.json()
    assert r.status_code == 507 and body["type"] == "error" and body["error"]["type"] == "api_error", body
    assert "does not fit in memory" in body["error"]["message"], body

    r = sup.post("/engines/v1/embeddings", {"model": "ai/tiny", "input": "hi"})
    assert r.status_code == 507, r.text
    assert sup.spawns() == [] and sup.ps() == []


def test_max_loaded_models_keeps_one_runner(supervisors, tmp_path):
    tiny2 = supervisors.other_tiny_model()
    sup, log = checked_start(supervisors, tmp_path, {"max_loaded_models": 1}, [supervisors.tiny_model(), tiny2])
    for model in ("ai/tiny", "ai/tiny2"):
        assert sup.chat(model=model, max_tokens=2).status_code == 200
        assert [p["model_name"] for p in sup.ps()] == [model + ":latest"]
    lines = log.read_text().splitlines()
    assert len(lines) == 2 and all(line.endswith("alive:") for line in lines), lines


OOM_ENGINE = """#!/bin/sh
# Fails like a CUDA engine out of memory for the first {fail} start(s) of ai/tiny, then becomes the real engine.
case " $* " in
  *" ai/tiny:latest "*)
    n=$(cat {count} 2>/dev/null || echo 0); echo $((n + 1)) > {count}
    if [ "$n" -lt {fail} ]; then
      echo "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 4096.00 MiB on device 0: cudaMalloc failed: out of memory" >&2
      echo "llama_model_load: error loading model: unable to allocate CUDA0 buffer" >&2
      exit 1
    fi;;
esac
exec {wrapper} "$@"
"""


def oom_start(supervisors, tmp_path: Path, fail: int):
    name = "oom"
    engine = tmp_path / "oom-engine.sh"
    count = tmp_path / "oom-count"
    engine.write_text(OOM_ENGINE.format(fail=fail, count=count, wrapper=tmp_path / name / "llama-server-wrapper.sh"))
    engine.chmod(0o755)
    tiny2 = supervisors.other_tiny_model()
    sup = supervisors.start(name=name, models=[supervisors.tiny_model(), tiny2], engine_binary=str(engine))
    return sup, count


def test_an_out_of_memory_load_evicts_idle_engines_and_is_retried_once(supervisors, tmp_path):
    sup, count = oom_start(supervisors, tmp_path, fail=1)
    assert sup.chat(model="ai/tiny2", max_tokens=2).status_code == 200
    [other] = sup.spawns()
    r = sup.chat(model="ai/tiny", max_tokens=2)
    assert r.status_code == 200, r.text
    assert count.read_text().strip() == "2"
    # The idle engine was evicted to make room for the retry.
    assert pid_gone(other.pid)
    assert [p["model_name"] for p in sup.ps()] == ["ai/tiny:latest"]


def test_a_second_out_of_memory_failure_returns_the_engines_message(supervisors, tmp_path):
    sup, count = oom_start(supervisors, tmp_path, fail=2)
    err = assert_openai_error(sup.chat(max_tokens=2), 502, "server_error")
    assert "cudaMalloc failed: out of memory" in err["message"], err
    assert count.read_text().strip() == "2"
    # Nothing is left queued or running, and the next request tries again (and now succeeds).
    assert sup.ps() == []
    assert sup.chat(max_tokens=2).status_code == 200


def test_a_busy_engine_is_waited_for_not_evicted_and_the_wait_shows_in_metrics(supervisors, tmp_path):
    import threading
    from prometheus_client.parser import text_string_to_metric_families

    tiny2 = supervisors.other_tiny_model()
    sup = supervisors.start(models=[supervisors.tiny_model(), tiny2],
                            scheduler={"memory_budget": "30MiB", "memory_reserve": 0})
    stream = sup.stream("/engines/v1/chat/completions",
                        {"model": "ai/tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 480,
                         "stream": True})
    assert stream.status == 200 and stream.next_data()
    [busy] = sup.spawns()
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("r", sup.chat(model="ai/tiny2", max_tokens=2)))
    t.start()

    def depth():
        text = sup.get("/metrics").text
        for f in text_string_to_metric_families(text):
            if f.name == "dmr_queue_depth":
                return {s.labels["for"]: s.value for s in f.samples}
    wait_until(lambda: depth() == {"queued": 1, "loading": 0, "slot": 0}, 10, "the request for ai/tiny2 to wait for memory")
    assert not pid_gone(busy.pid) and len(sup.spawns()) == 1  # the busy engine is not evicted
    assert stream.rest()[-1] == "[DONE]"
    t.join(30)
    assert result["r"].status_code == 200, result["r"].text
    assert pid_gone(busy.pid) and len(sup.spawns()) == 2
