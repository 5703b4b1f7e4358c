"""pytest wiring for the integration tests (see harness.py for what they run and how).

Inputs (environment):
  DMR_SUPERVISOR_BIN  the binary under test      (default <repo>/target/debug/dmr-supervisor; `cargo build`)
  DMR_LLAMA_SERVER    a real llama-server        (default: where engines/llama.cpp/install.sh puts it)
  DMR_TINY_GGUF       the tiny generated model   (default: where scripts/ensure-tiny-model.sh puts it)
  DMR_SMOLLM2_GGUF    the real SmolLM2 model     (default: where scripts/ensure-smollm2.sh puts it)
  DMR_TINY_RERANKER_GGUF  the tiny BERT reranker (default: where scripts/ensure-tiny-reranker.sh puts it;
              read by test_rerank.py only)
A missing input fails every test with the command that provides it; nothing is skipped.

Fixtures:
  prereqs     the resolved inputs (session-wide)
  supervisors a factory: `supervisors.start(models=..., server=..., scheduler=..., store=...)` starts one
              daemon per call; all are stopped (SIGTERM) at teardown, which also fails the test if one of
              them ignored SIGTERM or left an engine process behind
  sup         one supervisor with the default config: model `ai/tiny` (context 512, `--temp 0`)
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import Prereqs, Supervisor, SupervisorFactory, find_prereqs  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture(scope="session")
def prereqs() -> Prereqs:
    return find_prereqs()


@pytest.fixture
def supervisors(request, prereqs: Prereqs, tmp_path: Path):
    factory = SupervisorFactory(prereqs, tmp_path)
    yield factory
    rep = getattr(request.node, "rep_call", None)
    failed = rep is None or rep.failed
    problems = factory.close(failed)
    if problems:
        pytest.fail("teardown: " + "; ".join(problems), pytrace=False)


@pytest.fixture
def sup(supervisors: SupervisorFactory) -> Supervisor:
    return supervisors.start()
