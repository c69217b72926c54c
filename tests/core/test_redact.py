"""Secrets in URIs are masked; quoted values are cut."""

from ajpq.core.redact import quote, redact


def test_passwords_and_secret_query_values_are_masked():
    text = "at http://me:pw@host:5000/x and s3://AK:SK/x@bucket?X-Amz-Signature=abc&token=t&a=1"
    masked = redact(text)
    assert "pw" not in masked.replace("http", "") and "abc" not in masked
    assert "http://me:***@host:5000/x" in masked and "token=***" in masked and "a=1" in masked
    assert redact("sqlite:///tmp/mlflow.db") == "sqlite:///tmp/mlflow.db"
    assert redact("http://host:5000") == "http://host:5000"


def test_quote_cuts_and_masks():
    assert quote("x" * 500).endswith("(502 chars)") and len(quote("x" * 500)) <= 80
    assert quote("https://u:secret@h") == "'https://u:***@h'"
