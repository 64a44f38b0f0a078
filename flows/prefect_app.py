"""The app of the temporary Prefect server (flows/prefect_server.py runs it under uvicorn): Prefect's own, whose new
database starts as a copy of an empty one (flows/database_template.py).

A new database is what a first run in a new PREFECT_HOME meets (a new machine or user, a container, every test that
isolates its server): Prefect migrates it and registers its block types before it answers, 10-11 s on 2 cores against
3.4-4.5 s with a copy. The first server on a machine that makes one keeps it as the template once that is done,
before it answers any request; later new databases of the same Prefect version are copies. Another database (a
server URL, PostgreSQL, an in-memory one) is Prefect's alone.
"""
from __future__ import annotations

from flows import env  # noqa: F401  (must precede prefect)

import contextlib

import prefect
from prefect.server.api.server import create_app as prefect_app
from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

from flows.database_template import copy_database, keep_as_template, sqlite_file, template_path

SQLITE_PREFIX = "sqlite+aiosqlite:///"  # Prefect's SQLite URLs
# What Prefect writes into a new database before it answers: the schema's version and its block types.
TEMPLATE_TABLES = {"alembic_version", "block_type", "block_schema", "block_schema_reference"}


def create_app():
    """Prefect's server app, its new database copied from the template or, without one, kept as the template."""
    database = sqlite_file(PREFECT_API_DATABASE_CONNECTION_URL.value(), SQLITE_PREFIX)
    template = template_path("prefect", prefect.__version__)
    new = database is not None and not database.exists()
    make_template = new and not template.exists()
    if new and not make_template:
        with contextlib.suppress(OSError):
            copy_database(template, database)
    app = prefect_app()
    if make_template:
        prefect_start = app.router.lifespan_context  # migrations and block types, then Prefect's services

        @contextlib.asynccontextmanager
        async def lifespan(app_):
            async with prefect_start(app_) as state:
                keep_as_template(database, template, TEMPLATE_TABLES)
                yield state

        app.router.lifespan_context = lifespan
    return app
