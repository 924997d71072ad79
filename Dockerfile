FROM python:3.11-slim
WORKDIR /app
# A C compiler and OpenSSL's headers build the native WAL codec (ledger/adapters/_walcodec.c).
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev libssl-dev \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml setup.py README.md alembic.ini ./
COPY ledger ledger
COPY projections projections
COPY migrations migrations
RUN pip install --no-cache-dir -e .
ENV LEDGER_WAL_DIR=/var/lib/eventledger/wal
VOLUME /var/lib/eventledger
ENTRYPOINT ["ledger"]
