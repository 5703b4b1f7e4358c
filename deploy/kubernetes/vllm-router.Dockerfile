# The vLLM Router image for vllm-router.yaml: the vLLM project's router from PyPI, pinned as in
# scripts/requirements-fleet.txt (the version tests/integration/test_cluster.py runs).
#   docker build -t registry.example.com/vllm-router:0.1.17 -f deploy/kubernetes/vllm-router.Dockerfile .
FROM python:3.12-slim
RUN pip install --no-cache-dir vllm-router==0.1.17
USER 65532:65532
ENTRYPOINT ["vllm-router"]
