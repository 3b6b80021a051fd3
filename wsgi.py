"""gunicorn entry point: ``gunicorn wsgi:app`` (settings come from the environment)."""

from imgsvc import create_app

app = create_app()
