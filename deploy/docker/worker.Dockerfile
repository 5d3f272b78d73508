# syntax=docker/dockerfile:1.7
# Orchestrator worker image (CPU, no torch): runs DistillationWorkflow and its thin activities, which
# call the services over gRPC. Build from the repository root:
#   docker build -f deploy/docker/worker.Dockerfile -t syllabus/worker:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv && pip install --no-cache-dir pip==26.3
WORKDIR /src
COPY pyproject.toml README.md ./
COPY syllabus/ syllabus/
COPY teacher_svc/ teacher_svc/
COPY student_svc/ student_svc/
COPY trainer_svc/ trainer_svc/
COPY orchestrator/ orchestrator/
COPY sdk/ sdk/
COPY deploy/docker/light_requirements.py deploy/docker/
# Workflows and activities import no torch/transformers (ARCHITECTURE rule 5), yet pyproject lists
# them for the services: install pyproject's dependencies minus the ML stack, then the project with
# --no-deps (see light_requirements.py). The import check fails the build if that ever changes.
RUN python deploy/docker/light_requirements.py pyproject.toml > /tmp/light-requirements.txt \
    && pip install --no-cache-dir --requirement /tmp/light-requirements.txt \
    && pip install --no-cache-dir --no-deps . \
    && python -c "import orchestrator.worker"

FROM ${PYTHON_IMAGE}
RUN useradd --uid 10001 --user-group --home-dir /var/lib/syllabus --no-create-home --shell /usr/sbin/nologin syllabus \
    && mkdir -p /var/lib/syllabus \
    && chown -R 10001:10001 /var/lib/syllabus
COPY --from=builder /opt/venv /opt/venv
COPY --chmod=0755 deploy/docker/healthcheck.py /usr/local/bin/syllabus-healthcheck
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/syllabus \
    SYLLABUS_HOME=/var/lib/syllabus
USER 10001:10001
WORKDIR /var/lib/syllabus
# No gRPC server here: "healthy" means the Temporal frontend the worker polls answers SERVING.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=5 \
    CMD ["python", "/usr/local/bin/syllabus-healthcheck", "--temporal"]
ENTRYPOINT ["python", "-m", "orchestrator.worker"]
