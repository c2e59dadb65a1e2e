# Production image: one image, three roles (web, worker, beat) chosen by the command.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    DJANGO_SETTINGS_MODULE=config.settings.production

RUN apt-get update \
 && apt-get install -y --no-install-recommends libpq5 gettext \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 1000 zhida

WORKDIR /app
COPY requirements.txt constraints.txt ./
RUN pip install -r requirements.txt -c constraints.txt

COPY --chown=zhida:zhida . .
RUN DJANGO_SECRET_KEY=build python manage.py collectstatic --noinput \
 && DJANGO_SECRET_KEY=build python manage.py compilemessages --ignore=.venv

USER zhida
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"
# WEB_CONCURRENCY daphne processes on one port (default: the CPUs, at most 8): config/web.py
CMD ["python", "-m", "config.web", "--bind", "0.0.0.0", "--port", "8000"]
