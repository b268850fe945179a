"""Caller input that PostgreSQL or protobuf's JSON conversion cannot take is INVALID_ARGUMENT
before any I/O (it used to fail inside asyncpg or json_format: an INTERNAL error)."""

from __future__ import annotations

import base64
import json
import math

import pytest
from google.protobuf import struct_pb2
from parley_kb.knowledge_base import (
    _clean_text_field,
    _decode_page_token,
    _encode_page_token,
    _validate_document_id,
    validate_metadata,
)
from parley_kb.server import struct_to_dict
from parley_runtime.errors import InvalidArgument

pytestmark = pytest.mark.unit


def _token(payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()


def test_issued_page_tokens_round_trip() -> None:
    for doc_id in ("a", "x" * 256, "docs/ünïcode 文書.md"):
        assert _decode_page_token(_encode_page_token(doc_id)) == doc_id


@pytest.mark.parametrize(
    "token",
    [
        _token({"after": "a\u0000"}),
        _token({"after": "a\ud800"}),
        _token({"after": "line\nbreak"}),
        _token({"after": ""}),
        _token({"after": "x" * 257}),
        _token({"after": 1}),
        _token({"after": ["a"]}),
        _token({"before": "a"}),
        _token(["after"]),
        "not base64!",
        "\ud800",
        "QQ" * 5000,
    ],
)
def test_page_tokens_not_issued_here_are_invalid_argument(token: str) -> None:
    with pytest.raises(InvalidArgument, match="start without it"):
        _decode_page_token(token)


def test_lone_surrogates_are_refused_in_every_text_field() -> None:
    # gRPC strings cannot carry them, but the admin API's JSON bodies can ("\ud800").
    with pytest.raises(InvalidArgument, match="document_id"):
        _validate_document_id("doc\ud800")
    with pytest.raises(InvalidArgument, match="title is not valid Unicode"):
        _clean_text_field("t\udfff", "title", 100)
    with pytest.raises(InvalidArgument, match="metadata is not valid Unicode"):
        validate_metadata({"k": "v\ud800"}, "metadata")
    with pytest.raises(InvalidArgument, match="metadata is not valid Unicode"):
        validate_metadata({"k\ud800": "v"}, "metadata")
    with pytest.raises(InvalidArgument, match="finite numbers"):
        validate_metadata({"n": math.nan}, "metadata")


def _struct(value: dict[str, object]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(value)
    return out


@pytest.mark.parametrize(
    "value, where",
    [
        ({"n": math.nan}, "metadata.n is nan"),
        ({"n": math.inf}, "metadata.n is inf"),
        ({"a": [1, {"b": -math.inf}]}, "metadata.a[1].b is -inf"),
        ({"k\x00": math.nan}, "metadata.'k\\x00' is nan"),
        ({"k" * 500: math.nan}, "metadata." + "k" * 60 + " is nan"),
    ],
)
def test_struct_with_non_finite_numbers_names_the_field(value: dict[str, object],
                                                        where: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        struct_to_dict(_struct(value), "metadata")
    assert where in err.value.message


def test_struct_with_finite_numbers_converts() -> None:
    assert struct_to_dict(_struct({"n": 1.5, "l": [True, None, "s", {"x": 2}]}), "m") == {
        "n": 1.5, "l": [True, None, "s", {"x": 2}]
    }
    assert struct_to_dict(struct_pb2.Struct(), "m") == {}
