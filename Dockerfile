# The chat server image: daphne serving mysite.asgi, as a non-root user.
# docker-compose.yml runs it twice over: once as `migrate`, then as the `web` replicas.
# It defaults to production mode on SQLite in /data; alone, with a Redis you provide:
#   docker run --rm -v chat-data:/data -e DJANGO_SECRET_KEY=... IMAGE python manage.py migrate
#   docker run -v chat-data:/data -p 8000:8000 -e DJANGO_SECRET_KEY=... -e REDIS_URL=... \
#       -e DJANGO_SECURE_SSL_REDIRECT=false IMAGE
# The default command does not migrate: N copies of it would migrate at once.
# Behind a reverse proxy, add -e CHAT_TRUSTED_PROXIES=<its address or network>, so that the
# client's address comes from its X-Forwarded-For (docs/operations.md, "Behind a reverse proxy").
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DJANGO_DEBUG=false \
    DATABASE_URL=sqlite:////data/db.sqlite3

WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY manage.py ./
COPY mysite ./mysite
COPY chat ./chat
COPY serving ./serving

RUN useradd --create-home --uid 1000 chat && mkdir -p /data && chown chat /data
USER chat

EXPOSE 8000
CMD ["python", "-m", "serving.chat_daphne", "-b", "0.0.0.0", "-p", "8000", "mysite.asgi:application"]
