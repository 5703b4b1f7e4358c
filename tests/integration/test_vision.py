"""Images in chat for vision models: a model packaged with a multimodal projector (DMR's
`application/vnd.docker.ai.mmproj` layer) starts the real llama-server with `--mmproj`, and images reach it from
every dialect: OpenAI `image_url` parts (forwarded untouched), Anthropic image blocks and Ollama `images`
(translated into `image_url` data URLs). The model is the tiny random llama with the tiny random LLaVA projector
of scripts/make-tiny-mmproj.py: what it answers is noise, but llama-server's prompt-token count grows by the
image's tokens (4: a 32x32 image in 16x16 patches), which proves the image was encoded and placed in the prompt.
A model without a projector is refused with a 400 in each dialect before anything loads; http(s) image URLs are
refused unless `[server] fetch_image_urls` lets the engine fetch them."""

from __future__ import annotations

import base64
import http.server
import io
import json
import os
import struct
import subprocess
import tarfile
import threading
import zlib
from pathlib import Path

import anthropic
import ollama
import openai
import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGE_TOKENS = 4  # (32 / 16) ** 2 patches, each one embedding of the text model
MMPROJ_MEDIA_TYPE = "application/vnd.docker.ai.mmproj"


@pytest.fixture(scope="module")
def tiny_mmproj() -> Path:
    p = Path(os.environ.get("DMR_TINY_MMPROJ")
             or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
             / "dmr-supervisor/models/tiny-mmproj.gguf")
    if not p.is_file() or p.stat().st_size == 0:
        pytest.fail(f"tiny projector not found at {p} (DMR_TINY_MMPROJ): run `{REPO}/scripts/ensure-tiny-mmproj.sh` "
                    "and set DMR_TINY_MMPROJ to the path it prints", pytrace=False)
    return p


def png(width: int = 8, height: int = 8, rgb: tuple[int, int, int] = (200, 30, 90)) -> bytes:
    """A solid-colour RGB PNG, made with zlib alone."""
    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


PNG_B64 = base64.b64encode(png()).decode()
DATA_URL = "data:image/png;base64," + PNG_B64


def cli(supervisors, sup, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(supervisors.prereqs.supervisor), "--host", f"http://127.0.0.1:{sup.port}", *args],
                          capture_output=True, text=True, timeout=120)


def package_vision(supervisors, sup, tiny_mmproj: Path, name: str = "ai/tiny-vision") -> None:
    p = cli(supervisors, sup, "package", "--gguf", str(supervisors.prereqs.tiny_gguf), "--mmproj", str(tiny_mmproj),
            name)
    assert p.returncode == 0, p.stderr[-2000:]


def openai_chat(oai: openai.OpenAI, model: str, image: str | None):
    content: list[dict] = [{"type": "text", "text": "hello"}]
    if image is not None:
        content.append({"type": "image_url", "image_url": {"url": image}})
    return oai.chat.completions.create(model=model, messages=[{"role": "user", "content": content}],
                                       max_tokens=2, temperature=0)


def test_images_reach_a_packaged_vision_model_in_every_dialect(supervisors, tiny_mmproj):
    sup = supervisors.start()  # ai/tiny: the same weights without a projector
    package_vision(supervisors, sup, tiny_mmproj)

    # The store has the projector as DMR's layer, byte for byte, and says the model is a vision model.
    entry = sup.get("/models/ai/tiny-vision").json()
    assert entry.get("vision") is True, entry
    assert "vision" not in sup.get("/models/ai/tiny").json()
    r = sup.get("/models/ai/tiny-vision/export")
    assert r.status_code == 200, r.text
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
        [layer] = [l for l in manifest["layers"] if l["mediaType"] == MMPROJ_MEDIA_TYPE]
        blob = tar.extractfile("blobs/sha256/" + layer["digest"].removeprefix("sha256:")).read()
    assert blob == tiny_mmproj.read_bytes()
    show = sup.post("/api/show", {"model": "ai/tiny-vision"}).json()
    assert show["capabilities"] == ["completion", "vision"], show
    assert sup.post("/api/show", {"model": "ai/tiny"}).json()["capabilities"] == ["completion"]

    # OpenAI: the image_url part goes through untouched; the engine's prompt grows by the image's tokens.
    oai = openai.OpenAI(base_url=sup.url("/engines/v1"), api_key="none", max_retries=0)
    text_only = openai_chat(oai, "ai/tiny-vision", None).usage.prompt_tokens
    with_image = openai_chat(oai, "ai/tiny-vision", DATA_URL).usage.prompt_tokens
    assert with_image >= text_only + IMAGE_TOKENS, (text_only, with_image)
    [spawn] = [s for s in sup.spawns() if "--mmproj" in s.argv]
    assert spawn.flag("--mmproj").endswith(layer["digest"].removeprefix("sha256:")), spawn.argv

    # Anthropic: an image block becomes an image_url data URL.
    ant = anthropic.Anthropic(base_url=sup.base, api_key="none", max_retries=0)

    def anthropic_tokens(image: bool) -> int:
        content: list[dict] = [{"type": "text", "text": "hello"}]
        if image:
            content.insert(0, {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                             "data": PNG_B64}})
        msg = ant.messages.create(model="ai/tiny-vision", max_tokens=2,
                                  messages=[{"role": "user", "content": content}])
        return msg.usage.input_tokens

    a_text, a_image = anthropic_tokens(False), anthropic_tokens(True)
    assert a_image >= a_text + IMAGE_TOKENS, (a_text, a_image)

    # Ollama: `images` (base64) on a chat message and on a generate request.
    oll = ollama.Client(host=sup.base)
    o_text = oll.chat(model="ai/tiny-vision", messages=[{"role": "user", "content": "hello"}],
                      options={"num_predict": 2, "temperature": 0}).prompt_eval_count
    o_image = oll.chat(model="ai/tiny-vision", messages=[{"role": "user", "content": "hello", "images": [png()]}],
                       options={"num_predict": 2, "temperature": 0}).prompt_eval_count
    assert o_image >= o_text + IMAGE_TOKENS, (o_text, o_image)
    g_text = oll.generate(model="ai/tiny-vision", prompt="hello", options={"num_predict": 2}).prompt_eval_count
    g_image = oll.generate(model="ai/tiny-vision", prompt="hello", images=[PNG_B64],
                           options={"num_predict": 2}).prompt_eval_count
    assert g_image >= g_text + IMAGE_TOKENS, (g_text, g_image)

    # A model without a projector: a 400 naming it, in each dialect, and nothing is started for it.
    before = len(sup.spawns())
    with pytest.raises(openai.BadRequestError) as e:
        openai_chat(oai, "ai/tiny", DATA_URL)
    assert "no multimodal projector" in str(e.value), e.value
    with pytest.raises(anthropic.BadRequestError) as e:
        ant.messages.create(model="ai/tiny", max_tokens=2, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}}]}])
    assert "no multimodal projector" in str(e.value), e.value
    with pytest.raises(ollama.ResponseError) as e:
        oll.chat(model="ai/tiny", messages=[{"role": "user", "content": "hi", "images": [png()]}])
    assert e.value.status_code == 400 and "no multimodal projector" in e.value.error, e.value
    assert len(sup.spawns()) == before, "nothing was started for a model that cannot take the image"

    # http(s) image URLs are not fetched unless configured; other schemes never.
    for url, why in (("http://127.0.0.1:1/x.png", "fetch_image_urls"), ("file:///etc/passwd", "data: URL")):
        with pytest.raises(openai.BadRequestError) as e:
            openai_chat(oai, "ai/tiny-vision", url)
        assert why in str(e.value), e.value
        r = sup.post("/v1/messages", {"model": "ai/tiny-vision", "max_tokens": 2, "messages": [{"role": "user",
                     "content": [{"type": "image", "source": {"type": "url", "url": url}}]}]})
        assert r.status_code == 400 and r.json()["type"] == "error" and why in r.text, r.text


def test_a_server_side_import_takes_an_mmproj_path_and_http_images_when_allowed(supervisors, tiny_mmproj, tmp_path):
    """`POST /models/create` with an `mmproj` server path (loopback, below import_roots) packages the projector;
    with `[server] fetch_image_urls = true` an http:// image URL passes and llama-server fetches it itself."""
    served = png(16, 16, (10, 200, 10))
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(served)))
            self.end_headers()
            self.wfile.write(served)

        def log_message(self, *a):
            pass

    images = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=images.serve_forever, daemon=True).start()
    try:
        mmproj = tmp_path / "projector.gguf"  # below the test's import roots
        mmproj.write_bytes(tiny_mmproj.read_bytes())
        sup = supervisors.start(models=[], server={"fetch_image_urls": True})
        r = sup.post("/models/create", {"from": str(supervisors.prereqs.tiny_gguf), "name": "ai/seen",
                                        "mmproj": str(mmproj)})
        assert r.status_code == 200 and '"error"' not in r.text, r.text
        assert sup.get("/models/ai/seen").json().get("vision") is True
        r = sup.post("/models/create", {"from": str(supervisors.prereqs.tiny_gguf), "name": "ai/bad",
                                        "mmproj": "/etc/hostname"})
        assert r.status_code == 403, (r.status_code, r.text)
        junk = tmp_path / "junk.mmproj"
        junk.write_bytes(b"SECRET-BYTES not a projector")
        r = sup.post("/models/create", {"from": str(supervisors.prereqs.tiny_gguf), "name": "ai/bad",
                                        "mmproj": str(junk)})
        assert r.status_code == 400 and "not a GGUF file" in r.text and "SECRET" not in r.text, r.text
        assert sup.get("/models/ai/bad").status_code == 404

        oai = openai.OpenAI(base_url=sup.url("/engines/v1"), api_key="none", max_retries=0)
        text_only = openai_chat(oai, "ai/seen", None).usage.prompt_tokens
        url = f"http://127.0.0.1:{images.server_address[1]}/green.png"
        fetched = openai_chat(oai, "ai/seen", url).usage.prompt_tokens
        assert fetched >= text_only + IMAGE_TOKENS, (text_only, fetched)
        assert hits == ["/green.png"], hits
    finally:
        images.shutdown()


def test_a_hugging_face_pull_takes_the_repositorys_projector(supervisors, tiny_mmproj, tmp_path):
    """`hf.co/org/repo` with an `mmproj-*.gguf` beside the weights: the projector (F16 preferred, as DMR picks)
    comes as the model's mmproj layer and the pulled model takes images."""
    from hf_repos import PINNED, HfServer, lines, start

    repo = tmp_path / "hf/testorg/vision-GGUF"
    repo.mkdir(parents=True)
    (repo / "tiny-Q4_K_M.gguf").write_bytes(supervisors.prereqs.tiny_gguf.read_bytes())
    (repo / "mmproj-tiny-f16.gguf").write_bytes(tiny_mmproj.read_bytes())
    (repo / "mmproj-tiny-Q8_0.gguf").write_bytes(b"not the one: DMR prefers F16")
    for p in repo.iterdir():
        os.utime(p, (PINNED, PINNED))
    with HfServer(tmp_path / "hf") as hf:
        sup = start(supervisors, hf.url)
        out = lines(sup.post("/models/create", {"from": "hf.co/testorg/vision-GGUF"}, timeout=120))
        assert out[-1] == {"type": "success", "message": "Model pulled successfully"}, out[-3:]
        name = "huggingface.co/testorg/vision-gguf:latest"
        assert sup.get(f"/models/{name}").json().get("vision") is True
        r = sup.get(f"/models/{name}/export")
        with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
            manifest = json.load(tar.extractfile("manifest.json"))
            [layer] = [l for l in manifest["layers"] if l["mediaType"] == MMPROJ_MEDIA_TYPE]
            assert tar.extractfile("blobs/sha256/" + layer["digest"][7:]).read() == tiny_mmproj.read_bytes()
        oai = openai.OpenAI(base_url=sup.url("/engines/v1"), api_key="none", max_retries=0)
        text_only = openai_chat(oai, name, None).usage.prompt_tokens
        assert openai_chat(oai, name, DATA_URL).usage.prompt_tokens >= text_only + IMAGE_TOKENS


def test_a_vision_model_pushes_and_pulls_with_its_projector(supervisors, tiny_mmproj, tmp_path):
    """`package --mmproj … --push` puts DMR's mmproj layer in the registry's manifest; a pull into an empty store
    brings it back and the pulled model takes images."""
    from registry import Registry, get_manifest

    with Registry(tmp_path / "registry") as reg:
        a = supervisors.start(name="a", models=[])
        target = f"{reg.host}/vision/tiny:v1"
        p = cli(supervisors, a, "package", "--gguf", str(supervisors.prereqs.tiny_gguf), "--mmproj", str(tiny_mmproj),
                target, "--push")
        assert p.returncode == 0 and p.stdout.strip().splitlines()[-1] == "Model pushed successfully", p.stderr
        manifest, _ = get_manifest(reg, "vision/tiny", "v1")
        assert [l["mediaType"] for l in manifest["layers"]] == ["application/vnd.docker.ai.gguf.v3", MMPROJ_MEDIA_TYPE]
        b = supervisors.start(name="b", models=[])
        p = cli(supervisors, b, "pull", target)
        assert p.returncode == 0, p.stderr
        assert b.get(f"/models/{target}").json().get("vision") is True
        oai = openai.OpenAI(base_url=b.url("/engines/v1"), api_key="none", max_retries=0)
        text_only = openai_chat(oai, target, None).usage.prompt_tokens
        assert openai_chat(oai, target, DATA_URL).usage.prompt_tokens >= text_only + IMAGE_TOKENS
