#!/usr/bin/env python3
"""dmr-supervisor's diffusers image runner: one diffusers pipeline behind a small OpenAI-style HTTP API.

    python runner.py --model-path PATH --host H --port P --served-model-name NAME

PATH is a diffusers pipeline directory (with model_index.json) or a single `.dduf` file (read by diffusers
itself; unpacked into a temporary directory first when the installed diffusers no longer reads DDUF, which
0.41.0 dropped, or when DMR_DDUF_EXTRACT=1). As Docker Model Runner's diffusers server does, the pipeline
is loaded *before* the port is bound, so the supervisor's `GET /health` probe only succeeds once the model
is ready. CUDA (float16) when torch sees a GPU, else CPU
(float32); the safety checker and progress bars are off.

Endpoints (HTTP/1.1, keep-alive, stdlib only):
    GET  /health                  {"status": "healthy", "model_loaded": true}
    GET  /v1/models               the one served model
    POST /v1/images/generations   OpenAI's images API, b64_json only; one generation at a time

Errors are OpenAI-shaped: {"error": {"message", "type", "param", "code"}}.
A fatal startup error prints `DIFFUSERS_ERROR: <message>` on stderr and exits 1 (DMR's convention);
SIGTERM exits 0. One log line per request on stderr.

Request parsing and validation are pure functions that need neither torch nor diffusers (both are
imported lazily in `load_pipeline`), so they can be tested anywhere.
"""

import argparse
import base64
import inspect
import io
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
import warnings
import zipfile
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional, Tuple

MAX_BODY_BYTES = 1 << 20
DEFAULT_SIZE = "512x512"
MAX_DIMENSION = 2048
MAX_N = 10
MAX_STEPS = 200
MAX_SEED = (1 << 64) - 1

HEALTH_PATH = "/health"
MODELS_PATH = "/v1/models"
GENERATIONS_PATH = "/v1/images/generations"
ROUTES = {HEALTH_PATH: "GET", MODELS_PATH: "GET", GENERATIONS_PATH: "POST"}

_TEMP_DIRS = []  # unpacked .dduf directories, removed on exit


# --------------------------------------------------------------------------------------------------
# Pure part: errors, parsing, validation
# --------------------------------------------------------------------------------------------------


class ApiError(Exception):
    """An error answered to the client as OpenAI does: HTTP status plus {"error": {...}}."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type_

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type_: str = "invalid_request_error", param: Optional[str] = None,
               code: Optional[str] = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    width: int
    height: int
    n: int = 1
    negative_prompt: Optional[str] = None
    num_inference_steps: Optional[int] = None
    guidance_scale: Optional[float] = None
    seed: Optional[int] = None
    response_format: str = "b64_json"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


_SIZE = re.compile(r"^([0-9]{1,5})x([0-9]{1,5})$")


def parse_size(value: Any) -> Tuple[int, int]:
    """`"WIDTHxHEIGHT"` → (width, height); each a positive multiple of 8 and at most 2048."""
    if not isinstance(value, str):
        raise ApiError(400, "size must be a string like '512x512', not %s" % _type_name(value), "size")
    m = _SIZE.match(value.strip())
    if not m:
        raise ApiError(400, "size must look like 'WIDTHxHEIGHT' (e.g. '512x512'), got %r" % value, "size")
    width, height = int(m.group(1)), int(m.group(2))
    for name, dim in (("width", width), ("height", height)):
        if dim <= 0 or dim % 8 != 0 or dim > MAX_DIMENSION:
            raise ApiError(400, "size %r: %s must be a positive multiple of 8 and at most %d"
                           % (value, name, MAX_DIMENSION), "size")
    return width, height


def _optional_int(body: dict, name: str, low: int, high: int) -> Optional[int]:
    value = body.get(name)
    if value is None:
        return None
    if not _is_int(value):
        raise ApiError(400, "%s must be an integer, not %s" % (name, _type_name(value)), name)
    if not low <= value <= high:
        raise ApiError(400, "%s must be between %d and %d, got %d" % (name, low, high, value), name)
    return value


def parse_json_body(raw: bytes) -> dict:
    """The request body as a JSON object (400 otherwise)."""
    if not raw:
        raise ApiError(400, "the request body must be a JSON object; it is empty")
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ApiError(400, "the request body is not valid UTF-8")
    except ValueError as e:
        raise ApiError(400, "the request body is not valid JSON: %s" % e)
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object, not %s" % _type_name(body))
    return body


def canonical_model_name(name: str) -> str:
    """A model reference as Docker Model Runner normalises it (`tiny-sd` → `ai/tiny-sd:latest`, `hf.co/x/y` →
    `huggingface.co/x/y:latest`), without validating it. The supervisor forwards the client's body untouched
    while `--served-model-name` is the model's normalised tag, so both spellings must be accepted."""
    rest, at, digest = name.strip().partition("@")
    last_slash = rest.rfind("/") + 1
    colon = rest.find(":", last_slash)
    path, tag = (rest[:colon], rest[colon + 1:]) if colon >= 0 else (rest, None)
    parts = path.split("/")
    first = parts[0]
    if len(parts) > 1 and ("." in first or ":" in first or first.lower() == "localhost"):
        host = first.lower()
        parts = ["huggingface.co" if host == "hf.co" else host] + [p.lower() for p in parts[1:]]
    elif len(parts) == 1:
        parts = ["ai", first.lower()]
    else:
        parts = [p.lower() for p in parts]
    out = "/".join(parts)
    if tag is not None:
        out += ":" + tag
    elif not at:
        out += ":latest"
    if at:
        out += "@" + digest.lower()
    return out


def parse_generation_request(body: dict, served_model_name: str) -> GenerationRequest:
    """Validates an images/generations body. Unknown fields (quality, style, user, ...) are ignored.

    `model` may be absent (this runner serves exactly one model); when present it must name the served model
    (`ai/x:latest`, `ai/x` and `x` are the same model).
    """
    model = body.get("model")
    if model is not None:
        if not isinstance(model, str):
            raise ApiError(400, "model must be a string, not %s" % _type_name(model), "model")
        if model != served_model_name and canonical_model_name(model) != canonical_model_name(served_model_name):
            raise ApiError(404, "The model '%s' does not exist; this runner serves '%s'" % (model, served_model_name),
                           "model", "model_not_found")

    if "prompt" not in body or body["prompt"] is None:
        raise ApiError(400, "prompt is required", "prompt")
    prompt = body["prompt"]
    if not isinstance(prompt, str):
        raise ApiError(400, "prompt must be a string, not %s" % _type_name(prompt), "prompt")
    if not prompt.strip():
        raise ApiError(400, "prompt must not be empty", "prompt")

    size = body.get("size")
    width, height = parse_size(DEFAULT_SIZE if size is None else size)

    n = _optional_int(body, "n", 1, MAX_N)

    negative_prompt = body.get("negative_prompt")
    if negative_prompt is not None and not isinstance(negative_prompt, str):
        raise ApiError(400, "negative_prompt must be a string, not %s" % _type_name(negative_prompt), "negative_prompt")

    steps = _optional_int(body, "num_inference_steps", 1, MAX_STEPS)

    guidance = body.get("guidance_scale")
    if guidance is not None:
        if not _is_number(guidance):
            raise ApiError(400, "guidance_scale must be a number, not %s" % _type_name(guidance), "guidance_scale")
        if not math.isfinite(guidance):
            raise ApiError(400, "guidance_scale must be finite", "guidance_scale")
        guidance = float(guidance)

    seed = _optional_int(body, "seed", 0, MAX_SEED)

    response_format = body.get("response_format")
    if response_format is None:
        response_format = "b64_json"
    elif not isinstance(response_format, str):
        raise ApiError(400, "response_format must be a string, not %s" % _type_name(response_format), "response_format")
    elif response_format == "url":
        raise ApiError(400, "response_format 'url' is not supported (images are not stored); use 'b64_json'",
                       "response_format")
    elif response_format != "b64_json":
        raise ApiError(400, "response_format must be 'b64_json', got %r" % response_format, "response_format")

    return GenerationRequest(prompt=prompt, width=width, height=height, n=1 if n is None else n,
                             negative_prompt=negative_prompt, num_inference_steps=steps,
                             guidance_scale=guidance, seed=seed, response_format=response_format)


def route(method: str, path: str) -> str:
    """The handler name for (method, path), or raises 404 / 405. HEAD is not served."""
    path = path.split("?", 1)[0]
    want = ROUTES.get(path)
    if want is None:
        raise ApiError(404, "Invalid URL (%s %s)" % (method, path))
    if method != want:
        raise ApiError(405, "Method %s not allowed on %s; use %s" % (method, path, want))
    return path


def models_body(name: str, created: int) -> dict:
    return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "diffusers"}]}


def resolve_model_path(path: str) -> Tuple[str, Optional[str]]:
    """(directory for from_pretrained, dduf file name or None); ValueError with a readable message."""
    if not os.path.exists(path):
        raise ValueError("model path %s does not exist" % path)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "model_index.json")):
            raise ValueError("model directory %s has no model_index.json (not a diffusers pipeline)" % path)
        return path, None
    if path.lower().endswith(".dduf"):
        full = os.path.abspath(path)
        return os.path.dirname(full), os.path.basename(full)
    raise ValueError("model path %s is neither a diffusers pipeline directory nor a .dduf file" % path)


# --------------------------------------------------------------------------------------------------
# The pipeline (torch and diffusers are imported here, lazily)
# --------------------------------------------------------------------------------------------------


def read_model_index(directory: str, dduf_file: Optional[str]) -> dict:
    """model_index.json of a pipeline directory or .dduf file (a DDUF file is an uncompressed ZIP); {} if
    unreadable (the loader then reports the problem properly)."""
    try:
        if dduf_file is None:
            with open(os.path.join(directory, "model_index.json"), encoding="utf-8") as f:
                index = json.load(f)
        else:
            with zipfile.ZipFile(os.path.join(directory, dduf_file)) as z:
                index = json.loads(z.read("model_index.json").decode("utf-8"))
        return index if isinstance(index, dict) else {}
    except Exception:
        return {}


def extract_dduf(path: str, parent: Optional[str] = None) -> str:
    """Unpacks a .dduf file into a new temporary directory (under `parent`, else $TMPDIR) and returns it.

    For a diffusers that no longer reads DDUF itself (0.41.0 dropped it). Entries must be relative paths
    without '..'; the archive must hold model_index.json at its top."""
    target = tempfile.mkdtemp(prefix="dmr-dduf-", dir=parent)
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            for name in names:
                parts = name.replace("\\", "/").split("/")
                if name.startswith("/") or ".." in parts or ":" in parts[0]:
                    raise ValueError("%s: unsafe entry %r in the DDUF archive" % (path, name))
            if "model_index.json" not in names:
                raise ValueError("%s: the DDUF archive has no model_index.json" % path)
            z.extractall(target)
    except zipfile.BadZipFile as e:
        shutil.rmtree(target, ignore_errors=True)
        raise ValueError("%s is not a DDUF (ZIP) archive: %s" % (path, e))
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return target


def _dduf_unsupported(error: Exception) -> bool:
    text = str(error)
    return "DDUF" in text and "no longer supported" in text


class Engine:
    """The loaded pipeline plus what generating needs; `generate` is serialised by a lock."""

    def __init__(self, pipe: Any, device: str, torch: Any):
        self.pipe = pipe
        self.device = device
        self.torch = torch
        self.lock = threading.Lock()
        try:
            self.call_params = set(inspect.signature(pipe.__call__).parameters)
        except (TypeError, ValueError):
            self.call_params = set()

    def generate(self, req: GenerationRequest) -> list:
        """PNG bytes, one per image, each exactly req.width × req.height."""
        kwargs = {"prompt": req.prompt, "width": req.width, "height": req.height,
                  "num_images_per_prompt": req.n, "output_type": "pil"}
        optional = {"negative_prompt": req.negative_prompt, "num_inference_steps": req.num_inference_steps,
                    "guidance_scale": req.guidance_scale}
        for name, value in optional.items():
            if value is None:
                continue
            if self.call_params and name not in self.call_params:
                raise ApiError(400, "%s is not supported by this model's pipeline (%s)"
                               % (name, type(self.pipe).__name__), name)
            kwargs[name] = value
        with self.lock:
            if req.seed is not None:
                kwargs["generator"] = self.torch.Generator(device=self.device).manual_seed(req.seed)
            with self.torch.inference_mode():
                result = self.pipe(**kwargs)
        images = getattr(result, "images", None)
        if images is None and isinstance(result, (list, tuple)):
            images = result[0]
        if not images:
            raise RuntimeError("the pipeline returned no images")
        return [encode_png(img, req.width, req.height) for img in images]


def encode_png(image: Any, width: int, height: int) -> bytes:
    from PIL import Image

    if not isinstance(image, Image.Image):
        raise RuntimeError("the pipeline returned %s, not a PIL image" % type(image).__name__)
    if image.size != (width, height):  # some pipelines round to their own multiple
        image = image.resize((width, height), Image.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def import_stack() -> None:
    """Imports torch and diffusers quietly (ImportError when they are missing)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is local; never reach out
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TQDM_DISABLE", "1")  # diffusers' DDUF loader uses a bare tqdm
    # diffusers 0.40 warns that DDUF goes away in 0.41; requirements.txt pins 0.40 for exactly that reason
    warnings.filterwarnings("ignore", message=r".*dduf", category=FutureWarning)
    import torch  # noqa: F401
    import diffusers

    diffusers.utils.logging.disable_progress_bar()
    try:
        import transformers

        transformers.utils.logging.disable_progress_bar()
    except Exception:
        pass


def load_pipeline(model_path: str) -> Engine:
    directory, dduf_file = resolve_model_path(model_path)
    import_stack()
    import torch
    import diffusers
    from diffusers import DiffusionPipeline

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = torch.float16 if cuda else torch.float32
    log("loading %s on %s (%s), diffusers %s, torch %s" % (
        model_path, device, str(dtype).replace("torch.", ""), diffusers.__version__, torch.__version__))

    kwargs = {"dtype": dtype}  # diffusers deprecated torch_dtype in favour of dtype
    index = read_model_index(directory, dduf_file)
    if "safety_checker" in index:  # disabled, and its weights are not even loaded
        kwargs["safety_checker"] = None
        if "requires_safety_checker" in index:
            kwargs["requires_safety_checker"] = False

    unpack = dduf_file is not None and os.environ.get("DMR_DDUF_EXTRACT") == "1"
    pipe = None
    if dduf_file is None:
        pipe = DiffusionPipeline.from_pretrained(directory, **kwargs)
    elif not unpack:
        try:
            pipe = DiffusionPipeline.from_pretrained(directory, dduf_file=dduf_file, **kwargs)
        except ValueError as e:
            if not _dduf_unsupported(e):
                raise
            log("diffusers %s cannot read DDUF files; unpacking %s" % (diffusers.__version__, model_path))
            unpack = True
    if unpack:
        unpacked = extract_dduf(os.path.join(directory, dduf_file))
        _TEMP_DIRS.append(unpacked)
        log("unpacked %s into %s (removed once loaded)" % (model_path, unpacked))
        try:
            pipe = DiffusionPipeline.from_pretrained(unpacked, **kwargs)
        finally:
            shutil.rmtree(unpacked, ignore_errors=True)  # loaded (or mapped: unlinked files stay readable)
            _TEMP_DIRS.remove(unpacked)
    if cuda:
        pipe = pipe.to("cuda")
    if getattr(pipe, "safety_checker", None) is not None:
        pipe.safety_checker = None
    pipe.set_progress_bar_config(disable=True)
    return Engine(pipe, device, torch)


# --------------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------------


def log(message: str) -> None:
    sys.stderr.write("%s diffusers-runner: %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%S"), message))
    sys.stderr.flush()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # set on a subclass by make_server
    engine: Any = None
    served_model_name = ""
    created = 0

    def version_string(self) -> str:
        return "dmr-diffusers-runner"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        pass  # one line per request comes from _respond

    def _dispatch(self) -> None:
        started = time.monotonic()
        self._note = ""
        self._body_read = False
        try:
            path = route(self.command, self.path)
            if path == HEALTH_PATH:
                self._drain()
                self._respond(200, {"status": "healthy", "model_loaded": True}, started)
            elif path == MODELS_PATH:
                self._drain()
                self._respond(200, models_body(self.served_model_name, self.created), started)
            else:
                self._generate(started)
        except ApiError as e:
            self._drain()
            self._respond(e.status, e.body(), started)
        except Exception as e:  # a bug here, not in the pipeline: still answer
            traceback.print_exc()
            self.close_connection = True  # the body may be unread
            self._respond(500, error_body("internal error: %s: %s" % (type(e).__name__, e), "server_error"), started)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _dispatch

    def _read_body(self) -> bytes:
        if self._body_read:
            return b""
        self._body_read = True
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            return self._read_chunked()
        raw_len = self.headers.get("Content-Length")
        if raw_len is None:
            return b""
        try:
            length = int(raw_len)
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            raise ApiError(400, "invalid Content-Length %r" % raw_len)
        if length > MAX_BODY_BYTES:
            self.close_connection = True  # the body is left unread
            raise ApiError(413, "the request body is %d bytes; at most %d are accepted" % (length, MAX_BODY_BYTES))
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes:
        data = bytearray()
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                self.close_connection = True
                raise ApiError(400, "malformed chunked request body")
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return bytes(data)
            if len(data) + size > MAX_BODY_BYTES:
                self.close_connection = True
                raise ApiError(413, "the request body is larger than %d bytes" % MAX_BODY_BYTES)
            data += self.rfile.read(size)
            self.rfile.readline(1024)

    def _drain(self) -> None:
        """Reads (and drops) a body not read yet (sent where none is expected, or before an early error), so
        keep-alive stays in sync; a no-op once the body was read."""
        if self._body_read or self.close_connection:
            return
        try:
            self._read_body()
        except ApiError:
            self.close_connection = True

    def _generate(self, started: float) -> None:
        body = parse_json_body(self._read_body())
        req = parse_generation_request(body, self.served_model_name)
        self._note = " %dx%d n=%d" % (req.width, req.height, req.n)
        try:
            pngs = self.engine.generate(req)
        except ApiError:
            raise
        except Exception as e:
            traceback.print_exc()
            message = "image generation failed: %s: %s" % (type(e).__name__, e)
            try:
                torch = self.engine.torch
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except Exception:
                pass
            self._respond(500, error_body(message, "server_error"), started)
            return
        data = [{"b64_json": base64.b64encode(p).decode("ascii")} for p in pngs]
        self._respond(200, {"created": int(time.time()), "data": data}, started)

    def _respond(self, status: int, payload: dict, started: float) -> None:
        body = json.dumps(payload).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if status == 405:
                self.send_header("Allow", ROUTES.get(self.path.split("?", 1)[0], "GET"))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        log("%s %s %d %dB %.0fms%s" % (self.command, self.path, status, len(body),
                                       (time.monotonic() - started) * 1000, getattr(self, "_note", "")))


class Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True  # TIME_WAIT only: a port another process listens on still fails to bind


def make_server(engine: Any, host: str, port: int, served_model_name: str) -> Server:
    handler = type("BoundHandler", (Handler,), {
        "engine": engine, "served_model_name": served_model_name, "created": int(time.time())})
    return Server((host, port), handler)


# --------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------


def fatal(message: str) -> "NoReturn":  # noqa: F821
    for d in list(_TEMP_DIRS):
        shutil.rmtree(d, ignore_errors=True)
    sys.stderr.write("DIFFUSERS_ERROR: %s\n" % message)
    sys.stderr.flush()
    sys.exit(1)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> "NoReturn":  # noqa: F821
        self.print_usage(sys.stderr)
        fatal("bad arguments: %s" % message)


def parse_args(argv: list) -> argparse.Namespace:
    p = _Parser(description="Serve one diffusers pipeline over an OpenAI-style images API.")
    p.add_argument("--model-path", required=True, help="diffusers pipeline directory or .dduf file")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--served-model-name", required=True)
    args = p.parse_args(argv)
    if not 0 <= args.port <= 65535:
        p.error("--port must be between 0 and 65535")
    return args


def _exit_on_signal(signum: int, _frame: Any) -> None:
    log("received %s; exiting" % signal.Signals(signum).name)
    for d in list(_TEMP_DIRS):
        shutil.rmtree(d, ignore_errors=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # no interpreter teardown racing a generation thread inside torch


def main(argv: Optional[list] = None) -> None:
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, _exit_on_signal)
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        resolve_model_path(args.model_path)
    except ValueError as e:
        fatal(str(e))
    started = time.monotonic()
    try:
        import_stack()
    except Exception as e:
        fatal("torch/diffusers are not importable in %s: %s: %s (run engines/diffusers/install.sh)"
              % (sys.executable, type(e).__name__, e))
    try:
        engine = load_pipeline(args.model_path)
    except Exception as e:
        traceback.print_exc()
        fatal("loading the pipeline from %s failed: %s: %s" % (args.model_path, type(e).__name__, e))
    log("loaded %s (%s) in %.1fs" % (args.served_model_name, type(engine.pipe).__name__, time.monotonic() - started))
    try:
        server = make_server(engine, args.host, args.port, args.served_model_name)
    except OSError as e:
        fatal("couldn't bind %s:%d: %s" % (args.host, args.port, e))
    log("listening on http://%s:%d" % server.server_address[:2])
    server.serve_forever()


if __name__ == "__main__":
    main()
