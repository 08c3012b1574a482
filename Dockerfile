# The chat server image: daphne serving mysite.asgi. Used by docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY manage.py ./
COPY mysite ./mysite
COPY chat ./chat

RUN useradd --create-home --uid 1000 chat && mkdir -p /data && chown chat /data
USER chat

EXPOSE 8000
CMD ["sh", "-c", "python manage.py migrate --noinput && exec daphne -b 0.0.0.0 -p 8000 mysite.asgi:application"]
