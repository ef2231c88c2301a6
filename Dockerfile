# One image for all four services: `python -m services.<name>` picks one (SERVICE below).
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml requirements.lock README.md ./
COPY shared ./shared
COPY services ./services
COPY voucherstream ./voucherstream
RUN pip install -c requirements.lock . && useradd --system --uid 10001 voucherstream
USER voucherstream
ENV SERVICE=consent
CMD ["sh", "-c", "exec python -m services.${SERVICE}"]
