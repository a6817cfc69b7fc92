# The imgq image: the `imgq` command (serve, worker, beat, db, models, demo) plus Celery Flower.
#
#   docker build -t imgq .                                  # GPU image: tensorflow[and-cuda], several GB
#   docker build --build-arg EXTRAS=test -t imgq:cpu .      # CPU image: TensorFlow without the CUDA wheels (+ pytest)
#
# EXTRAS is a comma-separated list of the optional dependency groups in pyproject.toml.
# GPU containers need the NVIDIA Container Toolkit on the host; the CUDA libraries come from
# the pip wheels, so no CUDA base image is needed.
FROM python:3.11-slim

ARG EXTRAS=gpu

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    IMGQ_HOME=/data/imgq

RUN groupadd --system --gid 10001 imgq \
    && useradd --system --uid 10001 --gid imgq --create-home --home-dir /home/imgq imgq \
    && mkdir -p /data/imgq /data/models /data/uploads /data/crawl \
    && chown -R imgq:imgq /data

WORKDIR /tmp/build

# Third-party dependencies first, from pyproject.toml alone, so that this large layer
# (TensorFlow, CUDA wheels) is rebuilt only when the dependencies change, not the code.
# The flower extra is added for the flower service in docker-compose.yml.
COPY pyproject.toml ./
RUN python -c "import os, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; extras = [e.strip() for e in (os.environ['EXTRAS'] + ',flower').split(',') if e.strip()]; print('\n'.join(p['dependencies'] + [d for e in extras for d in p['optional-dependencies'][e]]))" > requirements.txt \
    && pip install -r requirements.txt

# The project itself (its dependencies are already satisfied, so this only installs imgq).
COPY . ./src
RUN cd src && pip install ".[${EXTRAS},flower]" \
    && cd / && rm -rf /tmp/build

USER imgq
WORKDIR /home/imgq
EXPOSE 8000 5555

ENTRYPOINT ["imgq"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
