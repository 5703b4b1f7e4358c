"""Tests of the diffusers image runner.

    cd /work/main && nice .venv-diffusers/bin/python -m pytest engines/diffusers -q

(a) Parsing/validation and the HTTP layer (with a stand-in engine): stdlib only, no torch.
(b) End to end: a tiny random StableDiffusionPipeline (scripts/make-tiny-diffusers.py) served by runner.py
    as a child process, from its directory and from its .dduf file. Skipped, with the reason, when torch or
    diffusers cannot be imported by this interpreter.
"""

import base64
import http.client
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
RUNNER = os.path.join(HERE, "runner.py")
MAKE_TINY = os.path.join(REPO, "scripts", "make-tiny-diffusers.py")
sys.path.insert(0, HERE)

import runner  # noqa: E402  (stdlib-only at import time)
from runner import ApiError, parse_generation_request, parse_json_body, parse_size  # noqa: E402

NAME = "ai/tiny-sd:latest"


def parse(body, name=NAME):
    return parse_generation_request(body, name)


def api_error(fn, *args):
    with pytest.raises(ApiError) as e:
        fn(*args)
    return e.value


# --------------------------------------------------------------------------------------------------
# (a) pure: sizes
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size,expected", [
    ("512x512", (512, 512)), ("64x48", (64, 48)), ("8x8", (8, 8)), ("2048x2048", (2048, 2048)),
    ("1024x768", (1024, 768)), (" 256x128 ", (256, 128)),
])
def test_valid_sizes(size, expected):
    assert parse_size(size) == expected


@pytest.mark.parametrize("size", [
    "0x512", "512x0", "500x512", "512x500", "2056x512", "512x4096", "512", "512x", "x512", "512*512",
    "512X512", "-8x8", "8.0x8", "", "auto", "512x512x3", "99999999x8",
])
def test_invalid_sizes(size):
    e = api_error(parse_size, size)
    assert (e.status, e.param, e.type, e.code) == (400, "size", "invalid_request_error", None)


@pytest.mark.parametrize("size", [512, 512.0, True, ["512x512"], {"w": 512}])
def test_size_must_be_a_string(size):
    e = api_error(parse, {"prompt": "p", "size": size})
    assert (e.status, e.param) == (400, "size")
    assert "string" in e.message


# --------------------------------------------------------------------------------------------------
# (a) pure: the whole request
# --------------------------------------------------------------------------------------------------


def test_defaults():
    r = parse({"model": NAME, "prompt": "a cat"})
    assert (r.prompt, r.width, r.height, r.n, r.response_format) == ("a cat", 512, 512, 1, "b64_json")
    assert r.negative_prompt is r.num_inference_steps is r.guidance_scale is r.seed is None


def test_all_fields_and_unknown_ones_ignored():
    r = parse({"model": NAME, "prompt": "a cat", "size": "64x48", "n": 3, "negative_prompt": "dogs",
               "num_inference_steps": 200, "guidance_scale": 7, "seed": 2 ** 64 - 1,
               "response_format": "b64_json", "quality": "hd", "style": "vivid", "user": "u1"})
    assert (r.width, r.height, r.n, r.negative_prompt, r.num_inference_steps) == (64, 48, 3, "dogs", 200)
    assert r.guidance_scale == 7.0 and isinstance(r.guidance_scale, float)
    assert r.seed == 2 ** 64 - 1


def test_nulls_mean_defaults():
    r = parse({"model": None, "prompt": "p", "size": None, "n": None, "seed": None, "response_format": None,
               "guidance_scale": None, "num_inference_steps": None, "negative_prompt": None})
    assert (r.width, r.height, r.n, r.seed, r.response_format) == (512, 512, 1, None, "b64_json")


@pytest.mark.parametrize("name,canonical", [
    ("tiny-sd", "ai/tiny-sd:latest"), ("ai/tiny-sd", "ai/tiny-sd:latest"), ("ai/tiny-sd:latest", "ai/tiny-sd:latest"),
    ("AI/Tiny-SD:v2", "ai/tiny-sd:v2"), ("hf.co/Org/Repo", "huggingface.co/org/repo:latest"),
    ("localhost:5000/me/m", "localhost:5000/me/m:latest"), ("docker.io/ai/sd:q4", "docker.io/ai/sd:q4"),
    ("ai/sd@sha256:" + "AB" * 32, "ai/sd@sha256:" + "ab" * 32),
])
def test_canonical_model_name(name, canonical):
    assert runner.canonical_model_name(name) == canonical


def test_model_names_are_compared_as_dmr_normalises_them():
    for spelling in ["ai/tiny-sd:latest", "ai/tiny-sd", "tiny-sd"]:
        assert parse({"model": spelling, "prompt": "p"}, "ai/tiny-sd:latest").prompt == "p"
        assert parse({"model": "ai/tiny-sd:latest", "prompt": "p"}, spelling).prompt == "p"
    for other in ["ai/tiny-sd:v2", "me/tiny-sd", "tiny-sd-2", ""]:
        e = api_error(parse, {"model": other, "prompt": "p"}, "ai/tiny-sd:latest")
        assert (e.status, e.code) == (404, "model_not_found")


def test_model_may_be_absent_but_must_match_when_present():
    assert parse({"prompt": "p"}).prompt == "p"
    e = api_error(parse, {"model": "ai/other", "prompt": "p"})
    assert (e.status, e.param, e.code, e.type) == (404, "model", "model_not_found", "invalid_request_error")
    assert "ai/other" in e.message
    e = api_error(parse, {"model": 3, "prompt": "p"})
    assert (e.status, e.param) == (400, "model")


@pytest.mark.parametrize("body,why", [
    ({}, "required"), ({"prompt": None}, "required"), ({"prompt": ""}, "empty"), ({"prompt": "  \n"}, "empty"),
    ({"prompt": 5}, "string"), ({"prompt": ["a"]}, "string"), ({"prompt": True}, "string"),
])
def test_prompt(body, why):
    e = api_error(parse, body)
    assert (e.status, e.param) == (400, "prompt")
    assert why in e.message


@pytest.mark.parametrize("n", [0, 11, -1, 100])
def test_n_range(n):
    e = api_error(parse, {"prompt": "p", "n": n})
    assert (e.status, e.param) == (400, "n")


@pytest.mark.parametrize("n", [1.5, 2.0, "2", True, [1]])
def test_n_type(n):
    e = api_error(parse, {"prompt": "p", "n": n})
    assert (e.status, e.param) == (400, "n")
    assert "integer" in e.message


def test_n_bounds_accepted():
    assert parse({"prompt": "p", "n": 1}).n == 1
    assert parse({"prompt": "p", "n": 10}).n == 10


@pytest.mark.parametrize("steps", [0, 201, -3, 1.0, "10", False])
def test_num_inference_steps(steps):
    e = api_error(parse, {"prompt": "p", "num_inference_steps": steps})
    assert (e.status, e.param) == (400, "num_inference_steps")


@pytest.mark.parametrize("g", ["7", True, [7], float("nan"), float("inf")])
def test_guidance_scale(g):
    e = api_error(parse, {"prompt": "p", "guidance_scale": g})
    assert (e.status, e.param) == (400, "guidance_scale")


@pytest.mark.parametrize("seed", [-1, 2 ** 64, 1.5, "42", True])
def test_seed(seed):
    e = api_error(parse, {"prompt": "p", "seed": seed})
    assert (e.status, e.param) == (400, "seed")


@pytest.mark.parametrize("neg", [1, ["x"], {"a": 1}, False])
def test_negative_prompt_type(neg):
    e = api_error(parse, {"prompt": "p", "negative_prompt": neg})
    assert (e.status, e.param) == (400, "negative_prompt")


@pytest.mark.parametrize("fmt,why", [("url", "not supported"), ("png", "b64_json"), ("B64_JSON", "b64_json"),
                                     (1, "string")])
def test_response_format(fmt, why):
    e = api_error(parse, {"prompt": "p", "response_format": fmt})
    assert (e.status, e.param) == (400, "response_format")
    assert why in e.message


@pytest.mark.parametrize("raw,why", [
    (b"", "empty"), (b"{", "not valid JSON"), (b"[1, 2]", "JSON object"), (b'"x"', "JSON object"),
    (b"null", "JSON object"), (b"\xff\xfe", "UTF-8"),
])
def test_body_must_be_a_json_object(raw, why):
    e = api_error(parse_json_body, raw)
    assert (e.status, e.param, e.type) == (400, None, "invalid_request_error")
    assert why in e.message


def test_error_body_shape():
    e = ApiError(400, "bad size", "size")
    assert e.body() == {"error": {"message": "bad size", "type": "invalid_request_error", "param": "size",
                                  "code": None}}
    assert runner.error_body("boom", "server_error") == {
        "error": {"message": "boom", "type": "server_error", "param": None, "code": None}}


def test_routes():
    assert runner.route("GET", "/health") == "/health"
    assert runner.route("GET", "/v1/models?x=1") == "/v1/models"
    assert runner.route("POST", "/v1/images/generations") == "/v1/images/generations"
    assert api_error(runner.route, "GET", "/v1/images/generations").status == 405
    assert api_error(runner.route, "POST", "/health").status == 405
    assert api_error(runner.route, "GET", "/v1/chat/completions").status == 404
    assert api_error(runner.route, "POST", "/").status == 404


def test_models_body():
    assert runner.models_body(NAME, 7) == {
        "object": "list", "data": [{"id": NAME, "object": "model", "created": 7, "owned_by": "diffusers"}]}


def test_resolve_model_path(tmp_path):
    d = tmp_path / "pipe"
    d.mkdir()
    with pytest.raises(ValueError, match="model_index.json"):
        runner.resolve_model_path(str(d))
    (d / "model_index.json").write_text("{}")
    assert runner.resolve_model_path(str(d)) == (str(d), None)
    f = tmp_path / "m.dduf"
    f.write_bytes(b"PK")
    assert runner.resolve_model_path(str(f)) == (str(tmp_path), "m.dduf")
    g = tmp_path / "m.gguf"
    g.write_bytes(b"GGUF")
    with pytest.raises(ValueError, match="neither"):
        runner.resolve_model_path(str(g))
    with pytest.raises(ValueError, match="does not exist"):
        runner.resolve_model_path(str(tmp_path / "nope"))


def make_zip(path, entries):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in entries.items():
            z.writestr(name, data)


def test_read_model_index(tmp_path):
    index = {"_class_name": "StableDiffusionPipeline", "safety_checker": [None, None]}
    make_zip(tmp_path / "m.dduf", {"model_index.json": json.dumps(index), "unet/config.json": "{}"})
    assert runner.read_model_index(str(tmp_path), "m.dduf") == index
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    assert runner.read_model_index(str(tmp_path), None) == index
    (tmp_path / "bad.dduf").write_bytes(b"not a zip")
    assert runner.read_model_index(str(tmp_path), "bad.dduf") == {}


def test_extract_dduf(tmp_path):
    src = tmp_path / "m.dduf"
    make_zip(src, {"model_index.json": "{}", "unet/config.json": '{"a": 1}', "unet/w.safetensors": b"\0" * 10})
    out = runner.extract_dduf(str(src), parent=str(tmp_path))
    assert os.path.dirname(out) == str(tmp_path)
    assert open(os.path.join(out, "unet", "config.json")).read() == '{"a": 1}'
    assert os.path.getsize(os.path.join(out, "unet", "w.safetensors")) == 10
    leftovers = set(os.listdir(tmp_path))
    for name, entries, why in [
        ("evil.dduf", {"model_index.json": "{}", "../x.json": "{}"}, "unsafe"),
        ("abs.dduf", {"model_index.json": "{}", "/etc/x.json": "{}"}, "unsafe"),
        ("noindex.dduf", {"unet/config.json": "{}"}, "model_index.json"),
    ]:
        make_zip(tmp_path / name, entries)
        with pytest.raises(ValueError, match=why):
            runner.extract_dduf(str(tmp_path / name), parent=str(tmp_path))
    (tmp_path / "junk.dduf").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a DDUF"):
        runner.extract_dduf(str(tmp_path / "junk.dduf"), parent=str(tmp_path))
    # failed extractions leave no temporary directory behind
    assert {n for n in os.listdir(tmp_path) if n.startswith("dmr-dduf-")} == {n for n in leftovers
                                                                               if n.startswith("dmr-dduf-")}


# --------------------------------------------------------------------------------------------------
# (a) the HTTP layer with a stand-in engine (no torch)
# --------------------------------------------------------------------------------------------------


class FakeEngine:
    def __init__(self):
        self.calls = []
        self.fail = None

    def generate(self, req):
        self.calls.append(req)
        if self.fail:
            raise self.fail
        return [b"png-%d-%dx%d" % (i, req.width, req.height) for i in range(req.n)]


@pytest.fixture
def fake_server():
    engine = FakeEngine()
    server = runner.make_server(engine, "127.0.0.1", 0, NAME)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield engine, server.server_address[1]
    server.shutdown()
    server.server_close()


def request(conn, method, path, body=None, headers=None):
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    conn.request(method, path, body=data, headers=headers or {})
    resp = conn.getresponse()
    raw = resp.read()
    assert resp.getheader("Content-Length") == str(len(raw))
    return resp, (json.loads(raw) if raw else None)


def assert_openai_error(payload, type_="invalid_request_error", param=None, code=None):
    assert set(payload) == {"error"}
    err = payload["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert (err["type"], err["param"], err["code"]) == (type_, param, code)


def test_http_keep_alive_and_shapes(fake_server):
    engine, port = fake_server
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    resp, body = request(conn, "GET", "/health")
    assert resp.status == 200 and body == {"status": "healthy", "model_loaded": True}
    assert resp.version == 11 and resp.getheader("Content-Type") == "application/json"
    resp, body = request(conn, "GET", "/v1/models")
    assert resp.status == 200 and body["data"][0]["id"] == NAME and isinstance(body["data"][0]["created"], int)
    resp, body = request(conn, "POST", "/v1/images/generations",
                         {"model": NAME, "prompt": "p", "size": "64x48", "n": 2, "seed": 3})
    assert resp.status == 200
    assert isinstance(body["created"], int)
    assert [base64.b64decode(d["b64_json"]) for d in body["data"]] == [b"png-0-64x48", b"png-1-64x48"]
    assert engine.calls[-1].seed == 3
    # errors keep the connection usable
    resp, body = request(conn, "POST", "/v1/images/generations", {"model": NAME, "prompt": "p", "size": "65x48"})
    assert resp.status == 400
    assert_openai_error(body, param="size")
    resp, body = request(conn, "POST", "/v1/images/generations", b"{not json",
                         {"Content-Type": "application/json"})
    assert resp.status == 400
    assert_openai_error(body)
    resp, body = request(conn, "POST", "/v1/images/generations", {"model": "x", "prompt": "p"})
    assert resp.status == 404
    assert_openai_error(body, param="model", code="model_not_found")
    resp, body = request(conn, "GET", "/nope")
    assert resp.status == 404
    assert_openai_error(body)
    resp, body = request(conn, "POST", "/nope", {"prompt": "p"})
    assert resp.status == 404
    resp, body = request(conn, "GET", "/v1/images/generations")
    assert resp.status == 405 and resp.getheader("Allow") == "POST"
    assert_openai_error(body)
    resp, body = request(conn, "DELETE", "/health")
    assert resp.status == 405
    resp, body = request(conn, "GET", "/health")  # still the same connection
    assert resp.status == 200
    conn.close()


def test_http_body_too_large(fake_server):
    engine, port = fake_server
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    big = json.dumps({"prompt": "x" * (runner.MAX_BODY_BYTES + 10)}).encode()
    conn.putrequest("POST", "/v1/images/generations")
    conn.putheader("Content-Length", str(len(big)))
    conn.endheaders()
    resp = conn.getresponse()  # answered before the body is sent
    assert resp.status == 413
    assert resp.getheader("Connection") == "close"
    assert_openai_error(json.loads(resp.read()))
    conn.close()
    assert engine.calls == []
    # just under the limit is read and parsed
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    ok = json.dumps({"prompt": "x" * (runner.MAX_BODY_BYTES - 100), "size": "8x8"}).encode()
    resp, body = request(conn, "POST", "/v1/images/generations", ok)
    assert resp.status == 200
    conn.close()


def test_http_chunked_body(fake_server):
    engine, port = fake_server
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    payload = json.dumps({"prompt": "p", "size": "16x8"}).encode()
    conn.request("POST", "/v1/images/generations", body=iter([payload[:5], payload[5:]]),
                 encode_chunked=True, headers={"Transfer-Encoding": "chunked"})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    assert json.loads(resp.read())["data"][0]["b64_json"] == base64.b64encode(b"png-0-16x8").decode()
    conn.close()


def test_http_pipeline_failure_is_a_500(fake_server):
    engine, port = fake_server
    engine.fail = RuntimeError("CUDA out of memory")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    resp, body = request(conn, "POST", "/v1/images/generations", {"prompt": "p", "size": "8x8"})
    assert resp.status == 500
    assert_openai_error(body, type_="server_error")
    assert "CUDA out of memory" in body["error"]["message"]
    engine.fail = ApiError(400, "negative_prompt is not supported", "negative_prompt")
    resp, body = request(conn, "POST", "/v1/images/generations", {"prompt": "p", "size": "8x8"})
    assert resp.status == 400
    assert_openai_error(body, param="negative_prompt")
    conn.close()


def test_startup_errors_without_torch(tmp_path):
    out = subprocess.run([sys.executable, RUNNER, "--model-path", str(tmp_path / "missing"), "--host", "127.0.0.1",
                          "--port", "1", "--served-model-name", NAME], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "DIFFUSERS_ERROR: model path" in out.stderr and "does not exist" in out.stderr
    out = subprocess.run([sys.executable, RUNNER, "--host", "127.0.0.1"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "DIFFUSERS_ERROR: bad arguments" in out.stderr


def test_startup_error_when_torch_is_missing(tmp_path):
    """A Python without torch/diffusers: one DIFFUSERS_ERROR line naming the problem, exit 1."""
    pipe = tmp_path / "pipe"
    pipe.mkdir()
    (pipe / "model_index.json").write_text("{}")
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "torch.py").write_text("raise ImportError('No module named torch (test shadow)')\n")
    out = subprocess.run([sys.executable, RUNNER, "--model-path", str(pipe), "--port", "1", "--served-model-name",
                          NAME], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=str(shadow)))
    assert out.returncode == 1
    assert "DIFFUSERS_ERROR: torch/diffusers are not importable" in out.stderr
    assert "install.sh" in out.stderr


# --------------------------------------------------------------------------------------------------
# (b) end to end: runner.py with a tiny random pipeline
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch_available():
    probe = subprocess.run([sys.executable, "-c", "import torch, diffusers, transformers, PIL"],
                           capture_output=True, text=True, timeout=300)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        pytest.fail("end-to-end tests need torch, diffusers, transformers and pillow in %s (%s); "
                    "install them with engines/diffusers/install.sh (scripts/test.sh does)" % (sys.executable, last),
                    pytrace=False)


@pytest.fixture(scope="module")
def tiny_pipeline(torch_available, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "tiny-sd"
    made = subprocess.run([sys.executable, MAKE_TINY, str(out), "--dduf"], capture_output=True, text=True,
                          timeout=300)
    assert made.returncode == 0, made.stderr
    assert (out / "model_index.json").is_file()
    assert os.path.isfile(str(out) + ".dduf")
    return str(out)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Runner:
    def __init__(self, model_path, port=None, env=None):
        self.port = port or free_port()
        self.stderr_path = model_path.rstrip("/") + ".%d.log" % self.port
        self.stderr = open(self.stderr_path, "w+")
        self.proc = subprocess.Popen(
            [sys.executable, RUNNER, "--model-path", model_path, "--host", "127.0.0.1", "--port", str(self.port),
             "--served-model-name", NAME], stdout=subprocess.DEVNULL, stderr=self.stderr,
            env=dict(os.environ, **(env or {})))

    def log(self):
        with open(self.stderr_path) as f:
            return f.read()

    def wait_healthy(self, timeout=180):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail("runner exited with %s before it was healthy:\n%s" % (self.proc.returncode, self.log()))
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                resp, body = request(conn, "GET", "/health")
                conn.close()
                if resp.status == 200:
                    return body
            except OSError:
                pass
            time.sleep(0.2)
        pytest.fail("runner not healthy after %ss:\n%s" % (timeout, self.log()))

    def post(self, body):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            return request(conn, "POST", "/v1/images/generations", body)
        finally:
            conn.close()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.stderr.close()
        return code


@pytest.fixture(scope="module")
def served_dir(tiny_pipeline):
    r = Runner(tiny_pipeline)
    r.wait_healthy()
    yield r
    r.stop()


def decode_pngs(body):
    from PIL import Image

    images = []
    for item in body["data"]:
        assert set(item) == {"b64_json"}
        raw = base64.b64decode(item["b64_json"])
        assert raw.startswith(b"\x89PNG\r\n\x1a\n")
        img = Image.open(io.BytesIO(raw))
        img.load()
        images.append((raw, img))
    return images


GEN = {"model": NAME, "prompt": "the cat", "size": "64x48", "seed": 1234, "num_inference_steps": 2}


def test_e2e_generation_size_and_determinism(served_dir):
    resp, body = served_dir.post(GEN)
    assert resp.status == 200, body
    assert isinstance(body["created"], int) and abs(body["created"] - time.time()) < 600
    [(raw1, img)] = decode_pngs(body)
    assert img.format == "PNG" and img.size == (64, 48)
    resp, body = served_dir.post(GEN)
    [(raw2, _)] = decode_pngs(body)
    assert raw1 == raw2, "the same seed must give the same image"
    resp, body = served_dir.post(dict(GEN, seed=99))
    [(raw3, _)] = decode_pngs(body)
    assert raw3 != raw1


def test_e2e_options(served_dir):
    resp, body = served_dir.post(dict(GEN, size="48x64", n=2, negative_prompt="dogs", guidance_scale=3.5))
    assert resp.status == 200, body
    images = decode_pngs(body)
    assert [img.size for _, img in images] == [(48, 64), (48, 64)]
    resp, body = served_dir.post({"model": NAME, "prompt": "no seed", "size": "16x16", "num_inference_steps": 1,
                                  "guidance_scale": 1.0})
    assert resp.status == 200, body
    assert decode_pngs(body)[0][1].size == (16, 16)


def test_e2e_errors(served_dir):
    resp, body = served_dir.post(dict(GEN, size="63x48"))
    assert resp.status == 400
    assert_openai_error(body, param="size")
    resp, body = served_dir.post(dict(GEN, model="ai/other:latest"))
    assert resp.status == 404
    assert_openai_error(body, param="model", code="model_not_found")
    resp, body = served_dir.post(dict(GEN, response_format="url"))
    assert resp.status == 400
    assert_openai_error(body, param="response_format")
    conn = http.client.HTTPConnection("127.0.0.1", served_dir.port, timeout=10)
    resp, body = request(conn, "GET", "/v1/models")
    assert body["data"][0]["id"] == NAME and body["data"][0]["owned_by"] == "diffusers"
    conn.close()
    assert "POST /v1/images/generations 400" in served_dir.log()


def test_e2e_health_answers_during_a_generation(served_dir):
    # /health is asked again and again while a generation runs (25 steps at 192x192: seconds on a CPU); the
    # runner's log line gives the generation's own duration, so the answers that came inside it are known.
    result = {}
    t = threading.Thread(target=lambda: result.update(r=served_dir.post(dict(GEN, size="192x192",
                                                                             num_inference_steps=25))))
    t.start()
    answers = []  # (answered at, seconds it took)
    while t.is_alive():
        conn = http.client.HTTPConnection("127.0.0.1", served_dir.port, timeout=10)
        started = time.monotonic()
        try:
            resp, _ = request(conn, "GET", "/health")
        except OSError as e:
            pytest.fail("/health did not answer while a generation ran: %r" % e)
        finally:
            conn.close()
        assert resp.status == 200
        answers.append((time.monotonic(), time.monotonic() - started))
        time.sleep(0.05)
    generated = time.monotonic()
    t.join(120)
    assert result["r"][0].status == 200
    # the runner serves the whole module: its last 192x192 generation is this one
    line = [l for l in served_dir.log().splitlines() if "POST /v1/images/generations 200" in l and "192x192" in l][-1]
    took = float(re.search(r" (\d+)ms", line).group(1)) / 1000
    during = [a for at, a in answers if generated - took < at < generated]
    assert during, ("no /health answer came while the %.2fs generation ran" % took, answers)
    assert max(a for _, a in answers) < 2, answers


@pytest.mark.parametrize("unpack", ["0", "1"], ids=["diffusers-reads-dduf", "unpacked-dduf"])
def test_e2e_dduf_and_sigterm(tiny_pipeline, served_dir, unpack, tmp_path):
    r = Runner(tiny_pipeline + ".dduf", env={"DMR_DDUF_EXTRACT": unpack, "TMPDIR": str(tmp_path)})
    try:
        r.wait_healthy()
        resp, body = r.post(GEN)
        assert resp.status == 200, body
        [(raw, img)] = decode_pngs(body)
        assert img.size == (64, 48)
        # the same weights as the directory form: the same image for the same seed
        assert raw == decode_pngs(served_dir.post(GEN)[1])[0][0]
    finally:
        code = r.stop()
    assert code == 0, r.log()
    assert "received SIGTERM; exiting" in r.log()
    assert ("unpacked " in r.log()) == (unpack == "1")
    assert not [n for n in os.listdir(tmp_path) if n.startswith("dmr-dduf-")], "the unpacked copy is removed"


def test_e2e_port_in_use_is_a_clear_startup_error(tiny_pipeline):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        r = Runner(tiny_pipeline, port=s.getsockname()[1])
        code = r.proc.wait(timeout=180)
        r.stderr.close()
    assert code == 1
    log = r.log()
    assert "DIFFUSERS_ERROR: couldn't bind" in log and "Address already in use" in log

