"""PostgreSQL fixtures: one throwaway server per test session, a fresh database per test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.postgres_server import create_database, pg_available, start_postgres

# A server the developer already runs (e.g. in a container) instead of a throwaway one.
EXTERNAL_DSN_ENV = "STEADYCHAT_TEST_POSTGRES_DSN"


@pytest.fixture(scope="session")
def postgres_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """DSN of a real PostgreSQL server for this session (started here and deleted after,
    unless ``$STEADYCHAT_TEST_POSTGRES_DSN`` names one)."""
    if external := os.environ.get(EXTERNAL_DSN_ENV):
        yield external
        return
    if not pg_available():
        pytest.fail(
            "PostgreSQL server binaries (initdb, pg_ctl) are missing: install the Debian "
            "package 'postgresql' (apt-get install -y postgresql), set "
            f"${EXTERNAL_DSN_ENV}, or deselect these tests with -m 'not postgres'"
        )
    with start_postgres(tmp_path_factory.mktemp("postgres")) as dsn:
        yield dsn


@pytest.fixture
def postgres_db(postgres_dsn: str) -> str:
    """DSN of an empty database of its own on the session's server."""
    return create_database(postgres_dsn)
