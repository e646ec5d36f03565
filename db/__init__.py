"""Results database: typed SQLAlchemy models, Alembic migrations, query functions and map artifacts.

Pages and workers call `db.queries` (and `db.artifacts` for anomaly maps); nothing outside this package
writes SQL. `db.session.init_db()` brings any database (SQLite file or PostgreSQL) to the latest schema.
"""
