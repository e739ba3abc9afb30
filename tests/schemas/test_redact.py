"""``redact``: the password of every DSN or URI in a text is masked, the rest stays."""

from __future__ import annotations

import pytest

from schemas import redact

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("text, shown", [
    ("postgresql://u:s3cret@127.0.0.1:5432/db", "postgresql://u:***@127.0.0.1:5432/db"),
    ("postgresql://u:p@ss@h/db?sslmode=require", "postgresql://u:***@h/db?sslmode=require"),
    ("mongodb://admin:s3cret@h1:1,h2:2/?replicaSet=rs", "mongodb://admin:***@h1:1,h2:2/?replicaSet=rs"),
    ("https://key:s3cret@s3.example.com/bucket", "https://key:***@s3.example.com/bucket"),
    ('missing "=" after "postgresql//u:s3cret@h/db" in connection info string',
     'missing "=" after "postgresql//u:***@h/db" in connection info string'),
    ("host=h user=u password=s3cret dbname=d", "host=h user=u password=*** dbname=d"),
    ("host=h password='s3 cr\\'et' dbname=d", "host=h password=*** dbname=d"),
    ("postgresql://u@h/db?password=s3cret&sslmode=x", "postgresql://u@h/db?password=***&sslmode=x"),
    ("{'dsn': 'postgresql://u:s3cret@h/db', 'password': 's3cret'}",
     "{'dsn': 'postgresql://u:***@h/db', 'password': ***}"),
])
def test_passwords_are_masked(text: str, shown: str) -> None:
    assert redact(text) == shown


@pytest.mark.parametrize("text", [
    'password authentication failed for user "u"', "http://127.0.0.1:9000/bucket",
    "postgresql://u@h:5432/db", "http://h:80/path@v2", "at 10:30 the run ended",
])
def test_text_without_a_password_is_unchanged(text: str) -> None:
    assert redact(text) == text

