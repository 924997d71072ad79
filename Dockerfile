FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY ledger ledger
COPY projections projections
COPY migrations migrations
RUN pip install --no-cache-dir -e .
ENV LEDGER_WAL_DIR=/var/lib/eventledger/wal
VOLUME /var/lib/eventledger
ENTRYPOINT ["ledger"]
