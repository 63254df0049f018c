# The Rollout image: the `rollout` CLI with the committed models and topics.yaml.
FROM python:3.11-slim
WORKDIR /srv/rollout
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip install --no-cache-dir .
COPY models ./models
COPY topics.yaml ./
ENTRYPOINT ["rollout"]
