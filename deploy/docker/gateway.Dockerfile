# syntax=docker/dockerfile:1.7
# JobService gateway image (CPU, no torch). Build from the repository root:
#   docker build -f deploy/docker/gateway.Dockerfile -t syllabus/gateway:0.1.0 .
# Also runs the schema migration (`syllabus db upgrade`) in the chart's pre-install/pre-upgrade Job.
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
# The gateway imports no torch/transformers, yet pyproject lists them for the services: install
# pyproject's dependencies minus the ML stack, then the project itself with --no-deps (see
# light_requirements.py). The import check fails the build if the gateway ever needs one of them.
RUN python deploy/docker/light_requirements.py pyproject.toml > /tmp/light-requirements.txt \
    && pip install --no-cache-dir --requirement /tmp/light-requirements.txt \
    && pip install --no-cache-dir --no-deps . \
    && python -c "import orchestrator.gateway, orchestrator.cli"

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
EXPOSE 50060
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/usr/local/bin/syllabus-healthcheck", "127.0.0.1:50060", "syllabus.jobs.v1.JobService"]
ENTRYPOINT ["python", "-m", "orchestrator.gateway"]
CMD ["--address", "0.0.0.0:50060"]
