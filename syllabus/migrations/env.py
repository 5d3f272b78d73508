"""Alembic environment: runs against the engine `syllabus.migrate` passes in (no alembic.ini)."""

from alembic import context

from syllabus.db import Base

engine = context.config.attributes["engine"]
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
