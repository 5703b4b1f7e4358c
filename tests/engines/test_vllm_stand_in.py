"""Tests of the vLLM stand-in (tests/engines/vllm) on its own: its argv handling, validation, start-up order,
process tree, signals and OpenAI endpoints, so that the supervisor's tests can rely on it behaving like vLLM.

Run: .venv/bin/python -m pytest tests/engines -q
Each test starts the stand-in in its own process group (as the supervisor does) on a free loopback port and kills
that group at teardown. Waits are for conditions with deadlines, never fixed sleeps, except where a test asserts
that something does NOT happen within a short window.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

HERE = Path(__file__).resolve().parent
STAND_IN = HERE / "vllm"
MAKE_MODEL = HERE.parent.parent / "scripts" / "make-tiny-safetensors-model.py"
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>\\n'}}{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\\n'}}{% endif %}")
FAST = {"VLLM_STAND_IN_DELAY": "0.2"}


# ------------------------------------------------------------------------------------------------- helpers


def write_model(d: Path, *, config: dict | None = None, weights: bytes | None = None, tokenizer: bool = True,
                chat_template: bool = True) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "max_position_embeddings": 2048}
    (d / "config.json").write_text(json.dumps(config if config is not None else cfg))
    if weights is None:
        header = json.dumps({"__metadata__": {}}).encode()
        header += b" " * (-len(header) % 8)
        weights = struct.pack("<Q", len(header)) + header
    if weights != b"none":
        (d / "model.safetensors").write_bytes(weights)
    if tokenizer:
        (d / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "WordLevel",
                                                                                  "vocab": {"<unk>": 0}}}))
        tc = {"eos_token": "</s>"}
        if chat_template:
            tc["chat_template"] = CHATML
        (d / "tokenizer_config.json").write_text(json.dumps(tc))
    return d


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return write_model(tmp_path / "model")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by a dead parent) counts as gone
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class StandIn:
    """One `vllm serve` stand-in process in its own process group, with stdout/stderr in files."""

    def __init__(self, tmp: Path, argv: list[str], env: dict[str, str], port: int | None):
        self.port = port
        self.log = tmp / f"starts-{time.monotonic_ns()}.jsonl"
        self.out = open(tmp / f"stdout-{time.monotonic_ns()}.txt", "w+")
        self.err = open(tmp / f"stderr-{time.monotonic_ns()}.txt", "w+")
        full_env = dict(os.environ, VLLM_STAND_IN_LOG=str(self.log), **env)
        self.argv = argv
        self.proc = subprocess.Popen([str(STAND_IN), *argv], stdout=self.out, stderr=self.err, env=full_env,
                                     start_new_session=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stderr(self) -> str:
        self.err.flush()
        return Path(self.err.name).read_text()

    def stdout(self) -> str:
        self.out.flush()
        return Path(self.out.name).read_text()

    def record(self) -> dict | None:
        try:
            lines = self.log.read_text().splitlines()
        except FileNotFoundError:
            return None
        return json.loads(lines[-1]) if lines else None

    def worker_pid(self) -> int:
        rec = wait_for(lambda: (self.record() or {}).get("worker_pid"), what="the start record")
        return rec

    def health(self) -> int | None:
        try:
            return requests.get(self.url + "/health", timeout=2).status_code
        except requests.ConnectionError:
            return None

    def wait_healthy(self, timeout: float = 15.0) -> None:
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"stand-in exited {self.proc.returncode}: {self.stderr()[-2000:]}")
            return self.health() == 200
        wait_for(ready, timeout, "/health 200")

    def wait_exit(self, timeout: float = 15.0) -> int:
        return self.proc.wait(timeout=timeout)

    def kill_group(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self.out.close()
        self.err.close()


@pytest.fixture
def start(tmp_path: Path):
    started: list[StandIn] = []

    def _start(model: Path | str | None, *extra: str, env: dict | None = None, port: int | None = None,
               name: str | None = "m", raw: list[str] | None = None) -> StandIn:
        if raw is not None:
            argv = raw
        else:
            port = port or free_port()
            argv = ["serve", str(model), "--host", "127.0.0.1", "--port", str(port)]
            if name:
                argv += ["--served-model-name", name]
            argv += list(extra)
        s = StandIn(tmp_path, argv, {**FAST, **(env or {})}, port)
        started.append(s)
        return s

    yield _start
    for s in started:
        s.kill_group()


def post(s: StandIn, path: str, body: dict, **kw) -> requests.Response:
    return requests.post(s.url + path, json=body, timeout=10, **kw)


def sse(resp: requests.Response) -> list:
    events = []
    for line in resp.iter_lines(decode_unicode=True):
        if line.startswith("data: "):
            data = line[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


# One server per runner for the HTTP tests (module scope: start-up is paid once).


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("vllm-stand-in")


def _module_server(tmp: Path, *extra: str) -> StandIn:
    model = write_model(tmp / f"model{len(extra)}")
    port = free_port()
    s = StandIn(tmp, ["serve", str(model), "--host", "127.0.0.1", "--port", str(port),
                      "--served-model-name", "m", "alias", *extra], FAST, port)
    s.model = model  # type: ignore[attr-defined]
    s.wait_healthy()
    return s


@pytest.fixture(scope="module")
def gen_server(module_tmp: Path):
    s = _module_server(module_tmp)
    yield s
    s.kill_group()


@pytest.fixture(scope="module")
def pool_server(module_tmp: Path):
    s = _module_server(module_tmp, "--runner", "pooling", "--max-model-len", "64")
    yield s
    s.kill_group()


# ------------------------------------------------------------------------------------------------- argv


def test_start_record_holds_argv_worker_and_group(start, model_dir):
    s = start(model_dir, "--max-model-len", "512", "-tp", "1", "--enforce-eager", "--gpu-memory-utilization", "0.5",
              "--hf-overrides", '{"rope_theta": 10000}', "--runner", "generate", "--chat-template", CHATML,
              "--max-num-batched-tokens", "4k", "--swap-space", "2.5", "--seed", "0", "--dtype", "bfloat16",
              "-q", "fp8", "--kv-cache-dtype", "fp8", "--enable-prefix-caching", "--enable-chunked-prefill",
              "--disable-custom-all-reduce", "--tokenizer-mode", "auto", "--max-logprobs", "5", "--revision",
              "main", "--load-format", "safetensors", "--disable-log-stats", "--block-size", "16",
              "--max-num-seqs", "8", "-pp", "1")
    s.wait_healthy()
    rec = s.record()
    assert rec["pid"] == s.proc.pid
    assert rec["argv"] == s.argv
    assert rec["pgid"] == s.proc.pid  # its own group, as started
    worker = rec["worker_pid"]
    assert alive(worker) and os.getpgid(worker) == s.proc.pid
    assert Path(f"/proc/{worker}/cmdline").read_bytes().split(b"\0")[0] == b"VLLM::EngineCore"
    assert Path(f"/proc/{worker}/comm").read_text().strip() == "VLLM::EngineCor"  # 15-char comm limit
    models = requests.get(s.url + "/v1/models", timeout=5).json()
    assert models["data"][0]["max_model_len"] == 512


def test_unrecognized_flag_exits_2_like_argparse(start, model_dir):
    s = start(model_dir, "--no-such-flag", "3", "--use-v2-block-manager")
    assert s.wait_exit() == 2
    err = s.stderr()
    assert err.startswith("usage: vllm ")
    assert "vllm: error: unrecognized arguments: --no-such-flag 3 --use-v2-block-manager" in err
    assert s.record()["worker_pid"] is None  # recorded, never got as far as a worker


def test_wrong_value_types_and_missing_subcommand(start, model_dir):
    s = start(model_dir, "--max-num-seqs", "many")
    assert s.wait_exit() == 2
    assert "vllm serve: error: argument --max-num-seqs: invalid int value: 'many'" in s.stderr()
    s = start(None, raw=[str(model_dir), "--port", "1"])
    assert s.wait_exit() == 2
    assert "vllm: error: argument subparser: invalid choice:" in s.stderr()
    s = start(model_dir, "--hf-overrides", "{not json}")
    assert s.wait_exit() == 2
    assert "argument --hf-overrides: Value {not json} cannot be converted to <function loads" in s.stderr()
    s = start(model_dir, "--seed", "x")
    assert s.wait_exit() == 2
    assert "argument --seed: Value x cannot be converted to <class 'int'>." in s.stderr()
    s = start(model_dir, "--dtype", "int4")
    assert s.wait_exit() == 2
    assert "argument --dtype: invalid choice: 'int4'" in s.stderr()


def test_underscores_and_abbreviations_are_accepted_like_vllm(start, model_dir):
    # vLLM reads --foo_bar as --foo-bar and (argparse's default) accepts unambiguous prefixes
    s = start(model_dir, "--max_model_len", "1k", "--gpu_memory_utilization=0.8", "--enforce")
    s.wait_healthy()
    assert requests.get(s.url + "/v1/models", timeout=5).json()["data"][0]["max_model_len"] == 1000


def test_model_flag_is_refused_with_serve(start, model_dir):
    s = start(None, raw=["serve", "--model", str(model_dir), "--port", str(free_port())])
    assert s.wait_exit() == 1
    assert "ValueError: With `vllm serve`, you should provide the model as a positional argument" in s.stderr()


# ------------------------------------------------------------------------------------------------- validation


def test_max_model_len_above_config_fails(start, model_dir):
    s = start(model_dir, "--max-model-len", "4096")
    assert s.wait_exit() == 1
    err = s.stderr()
    assert ("Value error, User-specified max_model_len (4096) is greater than the derived max_model_len "
            "(max_position_embeddings=2048 or model_max_length=None in model's config.json). To allow overriding "
            "this maximum, set the env var VLLM_ALLOW_LONG_MAX_MODEL_LEN=1.") in err
    assert "1 validation error for ModelConfig" in err
    assert s.record()["worker_pid"] is None


@pytest.mark.parametrize("flags", [["--hf-overrides", '{"max_position_embeddings": 8192}'],
                                   ["--hf-overrides.max_position_embeddings", "8192"],  # vLLM's dotted form
                                   ["--hf-overrides", '{"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}']])
def test_hf_overrides_change_the_derived_length(start, model_dir, flags):
    s = start(model_dir, "--max-model-len", "4096", *flags)
    s.wait_healthy()
    assert requests.get(s.url + "/v1/models", timeout=5).json()["data"][0]["max_model_len"] == 4096


def test_gpu_memory_utilization_above_1(start, model_dir):
    s = start(model_dir, "--gpu-memory-utilization", "1.5")
    assert s.wait_exit() == 1
    err = s.stderr()
    assert "1 validation error for CacheConfig" in err
    assert "Value error, GPU memory utilization must be less than 1.0. Got 1.5." in err
    assert s.record()["worker_pid"] is None


def test_gpu_memory_utilization_zero_fails_in_the_worker(start, model_dir):
    s = start(model_dir, "--gpu-memory-utilization", "0")  # not validated up front in vLLM 0.11
    assert s.wait_exit() == 1
    assert "ValueError: No available memory for the cache blocks." in s.stderr()


def test_hf_overrides_must_be_an_object(start, model_dir):
    s = start(model_dir, "--hf-overrides", "[1, 2]")  # not {...}: kept as a string, refused by ModelConfig
    assert s.wait_exit() == 1
    assert "2 validation errors for ModelConfig" in s.stderr()
    assert "Input should be a valid dictionary" in s.stderr()


def test_serve_args_validated_before_start(start, model_dir):
    s = start(model_dir, "--chat-template", "no/such/template.jinja")
    assert s.wait_exit() == 1
    assert "ValueError: The supplied chat template string (no/such/template.jinja) appears path-like, but " \
           "doesn't exist!" in s.stderr()
    s = start(model_dir, "--enable-auto-tool-choice")
    assert s.wait_exit() == 1
    assert "TypeError: Error: --enable-auto-tool-choice requires --tool-call-parser" in s.stderr()
    s = start(model_dir, "--enable-auto-tool-choice", "--tool-call-parser", "nope")
    assert s.wait_exit() == 1
    assert "KeyError: 'invalid tool call parser: nope (chose from {" in s.stderr()


def test_model_dir_without_config(start, tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    s = start(d)
    assert s.wait_exit() == 1
    assert f"Invalid repository ID or local directory specified: '{d}'" in s.stderr()


def test_model_dir_without_tokenizer(start, tmp_path):
    d = write_model(tmp_path / "m", tokenizer=False)
    s = start(d)
    assert s.wait_exit() == 1
    assert f"OSError: Can't load tokenizer for '{d}'" in s.stderr()


def test_model_dir_without_weights_fails_in_the_worker(start, tmp_path):
    d = write_model(tmp_path / "m", weights=b"none")
    s = start(d)
    assert s.wait_exit() == 1
    err = s.stderr()
    assert f"RuntimeError: Cannot find any model weights with `{d}`" in err
    assert "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): " \
           "{'EngineCore_DP0': 1}" in err
    assert not alive(s.record()["worker_pid"])


def test_corrupt_safetensors_header_fails(start, tmp_path):
    d = write_model(tmp_path / "m", weights=b"\xff" * 64)
    s = start(d)
    assert s.wait_exit() == 1
    assert "Error while deserializing header: HeaderTooLarge" in s.stderr()


def test_not_enough_free_gpu_memory(start, model_dir):
    s = start(model_dir, env={"VLLM_STAND_IN_GPU_TOTAL_GIB": "80", "VLLM_STAND_IN_GPU_FREE_GIB": "40"})
    assert s.wait_exit() == 1
    assert "Free memory on device (40.0/80.0 GiB) on startup is less than desired GPU memory utilization " \
           "(0.9, 72.0 GiB)" in s.stderr()


# ------------------------------------------------------------------------------------------------- start-up


def test_port_is_bound_early_but_only_listens_after_loading(start, model_dir):
    s = start(model_dir, env={"VLLM_STAND_IN_DELAY": "1.5"})
    s.worker_pid()  # the worker exists: loading has begun
    # bound: a plain bind (no SO_REUSEPORT) on the same port fails...
    with socket.socket() as probe:
        with pytest.raises(OSError):
            probe.bind(("127.0.0.1", s.port))
    # ...but not listening: connections are refused, so nothing answers /health yet
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", s.port), timeout=1).close()
    assert s.health() is None
    s.wait_healthy()
    out = s.stdout()
    assert "vLLM API server version 0.11.0" in out and "Loading weights took" in out
    assert f"Starting vLLM API server 0 on http://127.0.0.1:{s.port}" in out
    err = s.stderr()
    assert f"Started server process [{s.proc.pid}]" in err and "Application startup complete." in err


def test_port_in_use_exits_1(start, model_dir):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        s = start(model_dir, port=holder.getsockname()[1])
        assert s.wait_exit() == 1
    assert "OSError: [Errno 98] Address already in use" in s.stderr()


def test_unix_socket(start, model_dir, tmp_path):
    path = str(tmp_path / "runner.sock")
    s = start(None, raw=["serve", str(model_dir), "--uds", path, "--served-model-name", "m"])
    wait_for(lambda: os.path.exists(path), what="the socket file")

    def get(p: str) -> bytes:
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(path)
            c.sendall(f"GET {p} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            out = b""
            while chunk := c.recv(65536):
                out += chunk
            return out

    def healthy():
        try:
            return get("/health").startswith(b"HTTP/1.1 200")
        except OSError:
            return False
    wait_for(healthy, what="health over the unix socket")
    assert b'"id":"m"' in get("/v1/models")


# ------------------------------------------------------------------------------------------------- signals


def test_sigterm_while_loading_ends_like_an_uncaught_keyboard_interrupt(start, model_dir):
    s = start(model_dir, env={"VLLM_STAND_IN_DELAY": "30"})
    worker = s.worker_pid()
    os.kill(s.proc.pid, signal.SIGTERM)
    assert s.wait_exit() == -signal.SIGINT  # vLLM raises KeyboardInterrupt("terminated") during start-up
    assert "KeyboardInterrupt: terminated" in s.stderr()
    wait_for(lambda: not alive(worker), what="the worker to exit")


def test_sigterm_to_the_server_stops_its_worker(start, model_dir):
    s = start(model_dir)
    s.wait_healthy()
    worker = s.worker_pid()
    os.kill(s.proc.pid, signal.SIGTERM)  # the server alone, not the group: it must stop its worker itself
    assert s.wait_exit() == 0
    wait_for(lambda: not alive(worker), what="the worker to exit")
    assert "Application shutdown complete." in s.stderr()
    assert "Shutting down FastAPI HTTP server." in s.stdout()


def test_stubborn_server_and_worker_survive_sigterm_until_group_sigkill(start, model_dir):
    s = start(model_dir, env={"VLLM_STAND_IN_STUBBORN": "1"})
    s.wait_healthy()
    worker = s.worker_pid()
    os.killpg(s.proc.pid, signal.SIGTERM)
    time.sleep(0.5)  # asserting a non-event: nothing may exit within this window
    assert s.proc.poll() is None and alive(worker)
    assert s.health() == 200
    os.killpg(s.proc.pid, signal.SIGKILL)
    assert s.wait_exit() == -signal.SIGKILL
    wait_for(lambda: not alive(worker), what="the worker to die with the group")


def test_worker_outlives_a_sigkilled_server(start, model_dir):
    s = start(model_dir)
    s.wait_healthy()
    worker = s.worker_pid()
    os.kill(s.proc.pid, signal.SIGKILL)  # only the server: its EngineCore is orphaned, as with real vLLM
    s.wait_exit()
    time.sleep(0.3)  # asserting a non-event
    assert alive(worker)
    os.killpg(s.proc.pid, signal.SIGKILL)  # the group still exists (the worker is in it)
    wait_for(lambda: not alive(worker), what="the orphaned worker to die with the group")


def test_dead_worker_makes_health_503_and_a_request_stops_the_server(start, model_dir):
    s = start(model_dir, env={"VLLM_STAND_IN_WATCHDOG": "60"})
    s.wait_healthy()
    os.kill(s.worker_pid(), signal.SIGKILL)
    wait_for(lambda: s.health() == 503, what="/health 503")
    r = post(s, "/v1/completions", {"model": "m", "prompt": "hi"})
    assert r.status_code == 500 and r.content == b""
    assert s.wait_exit() == 0
    assert "Engine core proc EngineCore_DP0 died unexpectedly" in s.stdout()


def test_dead_worker_stops_the_server_at_the_next_watchdog_tick(start, model_dir):
    s = start(model_dir, env={"VLLM_STAND_IN_WATCHDOG": "0.5"})
    s.wait_healthy()
    os.kill(s.worker_pid(), signal.SIGKILL)
    assert s.wait_exit() == 0


# ------------------------------------------------------------------------------------------------- HTTP


def test_health_version_models_metrics(gen_server):
    s = gen_server
    r = requests.get(s.url + "/health", timeout=5)
    assert r.status_code == 200 and r.content == b""
    assert requests.get(s.url + "/version", timeout=5).json() == {"version": "0.11.0"}
    models = requests.get(s.url + "/v1/models", timeout=5).json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["m", "alias"]
    card = models["data"][0]
    assert card["object"] == "model" and card["owned_by"] == "vllm" and card["root"] == str(s.model)
    assert card["parent"] is None and card["max_model_len"] == 2048 and isinstance(card["created"], int)
    assert card["permission"][0]["object"] == "model_permission"
    metrics = requests.get(s.url + "/metrics", timeout=5).text
    assert 'vllm:num_requests_running{engine="0",model_name="m"} 0.0' in metrics
    assert "vllm:generation_tokens_total" in metrics
    assert requests.get(s.url + "/nope", timeout=5).json() == {"detail": "Not Found"}
    assert requests.get(s.url + "/v1/chat/completions", timeout=5).status_code == 405


def test_chat_non_stream(gen_server):
    r = post(gen_server, "/v1/chat/completions",
             {"model": "alias", "messages": [{"role": "system", "content": "be brief"},
                                             {"role": "user", "content": [{"type": "text", "text": "hello there"}]}],
              "max_tokens": 5})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    assert body["model"] == "alias"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "tok0 tok1 tok2 tok3 tok4"
    assert choice["finish_reason"] == "length" and choice["stop_reason"] is None
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9,
                             "prompt_tokens_details": None}


def test_chat_without_max_tokens_stops_at_eos(gen_server):
    body = post(gen_server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}).json()
    assert body["model"] == "m"  # no model field: the first served name
    choice = body["choices"][0]
    assert choice["message"]["content"] == " ".join(f"tok{i}" for i in range(16))
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] is None
    assert body["usage"]["completion_tokens"] == 17  # EOS is a generated token


def test_chat_stop_sequence_sets_stop_reason(gen_server):
    body = post(gen_server, "/v1/chat/completions",
                {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10,
                 "stop": ["tok3"]}).json()
    choice = body["choices"][0]
    assert choice["message"]["content"] == "tok0 tok1 tok2 "
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] == "tok3"


def test_chat_stream(gen_server):
    with requests.post(gen_server.url + "/v1/chat/completions", stream=True, timeout=10,
                       json={"model": "m", "messages": [{"role": "user", "content": "one two three"}],
                             "max_tokens": 4, "stream": True, "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert r.headers["transfer-encoding"] == "chunked"
        events = sse(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "m" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert content == "tok0 tok1 tok2 tok3"
    finals = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finals[-1] == "length" and all(f is None for f in finals[:-1])
    assert chunks[0]["prompt_token_ids"] is None and "prompt_token_ids" not in chunks[1]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {
        "prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert all("usage" not in c for c in chunks[:-1])


def test_chat_stream_without_usage_has_no_usage_chunk(gen_server):
    with requests.post(gen_server.url + "/v1/chat/completions", stream=True, timeout=10,
                       json={"messages": [{"role": "user", "content": "x"}], "max_tokens": 2, "stream": True}) as r:
        events = sse(r)
    assert events[-1] == "[DONE]" and all(e["choices"] for e in events[:-1])


def test_completions(gen_server):
    body = post(gen_server, "/v1/completions", {"model": "m", "prompt": "a b c", "max_tokens": 3}).json()
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    assert body["choices"][0]["text"] == "tok0 tok1 tok2" and body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["prompt_tokens"] == 3 and body["usage"]["completion_tokens"] == 3
    default = post(gen_server, "/v1/completions", {"model": "m", "prompt": "a"}).json()
    assert default["usage"]["completion_tokens"] == 16 and default["choices"][0]["finish_reason"] == "length"
    with requests.post(gen_server.url + "/v1/completions", stream=True, timeout=10,
                       json={"model": "m", "prompt": "a", "max_tokens": 2, "stream": True,
                             "stream_options": {"include_usage": True}}) as r:
        events = sse(r)
    assert events[-1] == "[DONE]"
    assert "".join(e["choices"][0]["text"] for e in events[:-2]) == "tok0 tok1"
    assert events[-3]["choices"][0]["finish_reason"] == "length"
    assert events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] == 2


def test_context_length_errors(gen_server):
    r = post(gen_server, "/v1/completions", {"model": "m", "prompt": "a b", "max_tokens": 2047})
    assert r.status_code == 400
    assert r.json() == {"error": {"message": "'max_tokens' or 'max_completion_tokens' is too large: 2047. This "
                                             "model's maximum context length is 2048 tokens and your request has 2 "
                                             "input tokens (2047 > 2048 - 2).",
                                  "type": "BadRequestError", "param": None, "code": 400}}
    r = post(gen_server, "/v1/chat/completions",
             {"model": "m", "messages": [{"role": "user", "content": "x " * 2048}]})
    assert r.status_code == 400
    assert "This model's maximum context length is 2048 tokens. However, your request has 2048 input tokens" \
        in r.json()["error"]["message"]


def test_errors_use_vllm_shapes(gen_server):
    r = post(gen_server, "/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 404
    assert r.json() == {"error": {"message": "The model `nope` does not exist.", "type": "NotFoundError",
                                  "param": None, "code": 404}}
    r = requests.post(gen_server.url + "/v1/chat/completions", data=b"{not json",
                      headers={"Content-Type": "application/json"}, timeout=5)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == 400 and err["type"] == "Bad Request" and "JSON decode error" in err["message"]
    r = post(gen_server, "/v1/embeddings", {"model": "m", "input": "x"})
    assert r.status_code == 400
    assert r.json() == {"error": {"message": "The model does not support Embeddings API", "type": "BadRequestError",
                                  "param": None, "code": 400}}
    r = post(gen_server, "/v1/chat/completions",
             {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function",
                                                                       "function": {"name": "f"}}]})
    assert r.status_code == 400 and "--enable-auto-tool-choice" in r.json()["error"]["message"]


def test_keep_alive_and_chunked_request_body(gen_server):
    with requests.Session() as sess:
        for _ in range(3):
            assert sess.get(gen_server.url + "/health", timeout=5).status_code == 200

        def body():
            yield b'{"model": "m", "prompt": '
            yield b'"x", "max_tokens": 1}'
        r = sess.post(gen_server.url + "/v1/completions", data=body(),
                      headers={"Content-Type": "application/json"}, timeout=5)
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == "tok0"


def test_tokenize(gen_server):
    r = post(gen_server, "/tokenize", {"model": "m", "prompt": "one two three"}).json()
    assert r["count"] == 3 and r["max_model_len"] == 2048 and len(r["tokens"]) == 3


def test_chat_needs_a_template(start, tmp_path):
    s = start(write_model(tmp_path / "m", chat_template=False))
    s.wait_healthy()
    r = post(s, "/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400
    assert r.json()["error"]["message"].startswith("As of transformers v4.44, default chat template is no longer")
    assert post(s, "/v1/completions", {"model": "m", "prompt": "x", "max_tokens": 1}).status_code == 200


def test_embeddings_with_pooling_runner(pool_server):
    s = pool_server
    one = post(s, "/v1/embeddings", {"model": "m", "input": "hello world"}).json()
    assert one["object"] == "list" and one["model"] == "m"
    assert one["data"][0]["object"] == "embedding" and one["data"][0]["index"] == 0
    vec = one["data"][0]["embedding"]
    assert len(vec) == 8 and abs(sum(x * x for x in vec) - 1.0) < 1e-9
    assert one["usage"]["prompt_tokens"] == 2 and one["usage"]["total_tokens"] == 2
    many = post(s, "/v1/embeddings", {"model": "alias", "input": ["hello world", "other"]}).json()
    assert [d["index"] for d in many["data"]] == [0, 1]
    assert many["data"][0]["embedding"] == vec and many["data"][1]["embedding"] != vec
    b64 = post(s, "/v1/embeddings", {"model": "m", "input": "hello world", "encoding_format": "base64"}).json()
    raw = base64.b64decode(b64["data"][0]["embedding"])
    assert struct.unpack("<8f", raw) == pytest.approx(vec, abs=1e-6)
    r = post(s, "/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "The model does not support Chat Completions API"
    r = post(s, "/v1/embeddings", {"model": "m", "input": "x " * 65})
    assert r.status_code == 400 and "maximum context length is 64 tokens" in r.json()["error"]["message"]


def test_max_num_seqs_queues_requests_and_metrics_show_it(start, model_dir):
    import threading
    s = start(model_dir, "--max-num-seqs", "1", "-O3", env={"VLLM_STAND_IN_TOKEN_DELAY": "0.05"})
    s.wait_healthy()
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        post(s, "/v1/completions", {"model": "m", "prompt": "x", "max_tokens": 10}).status_code)) for _ in range(2)]
    for t in threads:
        t.start()

    def gauges():
        text = requests.get(s.url + "/metrics", timeout=5).text
        return ('vllm:num_requests_running{engine="0",model_name="m"} 1.0' in text
                and 'vllm:num_requests_waiting{engine="0",model_name="m"} 1.0' in text)
    wait_for(gauges, what="one request running and one waiting")
    for t in threads:
        t.join(timeout=10)
    assert results == [200, 200]
    text = requests.get(s.url + "/metrics", timeout=5).text
    assert 'vllm:generation_tokens_total{engine="0",model_name="m"} 20.0' in text
    assert 'vllm:request_success_total{engine="0",finished_reason="length",model_name="m"} 2.0' in text


def test_client_disconnect_aborts_the_stream(start, model_dir):
    s = start(model_dir, env={"VLLM_STAND_IN_TOKEN_DELAY": "0.05"})
    s.wait_healthy()
    with requests.post(s.url + "/v1/completions", stream=True, timeout=10,
                       json={"model": "m", "prompt": "x", "max_tokens": 200, "stream": True}) as r:
        next(r.iter_lines())
    wait_for(lambda: 'finished_reason="abort",model_name="m"} 1.0' in requests.get(s.url + "/metrics",
                                                                                   timeout=5).text,
             what="the aborted request in the metrics")


# ------------------------------------------------------------------------------------------------- the tiny model


def test_tiny_model_script_is_deterministic_and_served(start, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        subprocess.run([sys.executable, str(MAKE_MODEL), str(d), "--context-length", "1024"], check=True,
                       capture_output=True)
    names = sorted(p.name for p in a.iterdir())
    assert names == ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                     "tokenizer_config.json"]
    assert all((a / n).read_bytes() == (b / n).read_bytes() for n in names)
    blob = (a / "model.safetensors").read_bytes()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    assert (8 + n) % 8 == 0
    ends = sorted(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
    assert ends[-1] == len(blob) - 8 - n  # the tensors cover the data buffer exactly
    assert json.loads((a / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    s = start(a)
    s.wait_healthy()
    assert requests.get(s.url + "/v1/models", timeout=5).json()["data"][0]["max_model_len"] == 1024
    r = post(s, "/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                         "max_tokens": 2})
    assert r.json()["choices"][0]["message"]["content"] == "tok0 tok1"
