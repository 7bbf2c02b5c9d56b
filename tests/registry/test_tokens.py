"""Tokens: format and checksum, digests only in the database, expiry, revocation, last use."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import event, select

from seqr.errors import AuthenticationError
from seqr.registry import tokens
from seqr.registry.models import Token

from registry_helpers import World


def test_token_shape():
    issued = tokens.generate()
    assert issued.secret.startswith("seqr_")
    assert len(issued.secret) == len("seqr_") + 32 + 7
    assert tokens.check_format(issued.secret) == issued.digest
    assert issued.digest == tokens.digest_of(issued.secret)
    assert tokens.generate().secret != issued.secret


@pytest.mark.parametrize("mistake", ["changed", "swapped", "truncated", "prefix", "upper"])
def test_checksum_rejects_mistyped_token(mistake: str):
    secret = tokens.generate().secret
    body = secret[len("seqr_"):]
    mistyped = {
        "changed": secret[:-10] + ("a" if secret[-10] != "a" else "b") + secret[-9:],
        "swapped": "seqr_" + body[1] + body[0] + body[2:],
        "truncated": secret[:-1],
        "prefix": "sqer_" + body,
        "upper": secret.upper(),
    }[mistake]
    if mistyped == secret:
        pytest.skip("the swap produced the same token")
    with pytest.raises(AuthenticationError):
        tokens.check_format(mistyped)


def test_mistyped_token_rejected_before_query(world: World):
    secret = world.registry.create_token(world.admin).token
    mistyped = secret[:-1] + ("a" if secret[-1] != "a" else "b")
    statements: list[str] = []

    def record(_conn, _cursor, statement, *_args):
        statements.append(statement)

    event.listen(world.registry.engine, "before_cursor_execute", record)
    try:
        with pytest.raises(AuthenticationError, match="checksum"):
            world.registry.authenticate(mistyped)
        with pytest.raises(AuthenticationError, match="malformed"):
            world.registry.authenticate("not-a-token")
    finally:
        event.remove(world.registry.engine, "before_cursor_execute", record)
    assert statements == []


def test_database_holds_only_digests(world: World):
    created = world.registry.create_token(world.admin)
    with world.registry._read() as session:
        rows = session.scalars(select(Token)).all()
    stored = {value for row in rows for value in (row.digest, row.public_id)}
    assert created.token not in stored
    assert tokens.digest_of(created.token) in stored
    assert all(created.token[len("seqr_"):][:16] not in value for value in stored)


def test_unknown_token_rejected_and_audited(world: World):
    with pytest.raises(AuthenticationError):
        world.registry.authenticate(tokens.generate().secret)
    last = world.registry.list_audit_events(world.admin, limit=1)[0]
    assert last.action == "login"
    assert last.outcome == "failure"
    assert last.detail == {"reason": "unknown token"}


def test_expired_token_rejected(world: World):
    created = world.registry.create_token(world.admin, expires_in=timedelta(days=30))
    assert world.registry.authenticate(created.token).id == world.admin.id
    world.clock.advance(timedelta(days=30))
    with pytest.raises(AuthenticationError, match="expired"):
        world.registry.authenticate(created.token)


def test_last_used_recorded(world: World):
    created = world.registry.create_token(world.admin)
    assert created.info.last_used_at is None
    world.clock.advance(timedelta(minutes=5))
    world.registry.authenticate(created.token)
    listed = {token.public_id: token for token in world.registry.list_tokens(world.admin)}
    assert listed[created.info.public_id].last_used_at == world.clock.now


def test_nonpositive_lifetime_rejected(world: World):
    with pytest.raises(ValueError):
        world.registry.create_token(world.admin, expires_in=timedelta(0))
