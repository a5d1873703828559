"""What the benchmarks share: throwaway PostgreSQL databases, and PASS/FAIL verdicts."""

from __future__ import annotations

import sys

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url


class Postgres:
    """Creates and drops throwaway databases through an admin connection."""

    def __init__(self, admin_url: str) -> None:
        self._admin = make_url(admin_url).set(drivername="postgresql")
        self.created: list[str] = []

    def conninfo(self, name: str) -> str:
        return self._admin.set(database=name).render_as_string(hide_password=False)

    def sqlalchemy_url(self, name: str) -> str:
        url = self._admin.set(drivername="postgresql+psycopg", database=name)
        return url.render_as_string(hide_password=False)

    def _execute(self, statement: sql.Composed) -> None:
        with psycopg.connect(
            self.conninfo(self._admin.database or "postgres"), autocommit=True
        ) as c:
            c.execute(statement)

    def create(self, name: str, *, template: str | None = None) -> str:
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            statement = sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        self._execute(statement)
        self.created.append(name)
        return name

    def drop(self, name: str) -> None:
        try:
            self._execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        except psycopg.Error as exc:
            print(f"warning: could not drop database {name}: {exc}", file=sys.stderr)
        if name in self.created:
            self.created.remove(name)

    def drop_all(self) -> None:
        for name in reversed(list(self.created)):
            self.drop(name)


class Verdicts:
    def __init__(self) -> None:
        self.failed: list[str] = []

    def check(self, name: str, ok: bool, detail: str) -> None:
        print(f"{'PASS' if ok else 'FAIL'}: {name}: {detail}")
        if not ok:
            self.failed.append(name)
