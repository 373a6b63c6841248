"""Property tests of the KServe v2 codec: whatever arrives, decoding either gives a request or
raises :class:`ProtocolError` with a 4xx status, and never allocates much more than the
body limit it was given."""

from __future__ import annotations

import gzip
import json
import tracemalloc
import zlib
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekit._kserve import (  # internal: the KServe v2 wire codec, fuzzed
    DATATYPES,
    HEADER_LENGTH,
    InferRequest,
    decode_infer_request,
    encode_infer_request,
)
from edgekit.serve import ProtocolError

LIMIT = 64 << 10
STATUSES = {400, 413, 415}
FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _decode(body: bytes, headers: dict[str, str], **kw: Any) -> InferRequest | None:
    """Decode; return None on a documented ProtocolError, fail the test on anything else."""
    try:
        return decode_infer_request(body, headers, limit=kw.pop("limit", LIMIT), **kw)
    except ProtocolError as exc:
        assert exc.status in STATUSES, exc
        assert len(exc.message) < 2000, exc.message[:200]  # nothing echoed at length
        return None


# -- strategies ---------------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
)
_json = st.recursive(
    _scalars,
    lambda kids: (
        st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=8), kids, max_size=5)
    ),
    max_leaves=30,
)
_shape = st.one_of(
    st.lists(st.integers(min_value=0, max_value=6), min_size=0, max_size=4),
    st.lists(st.integers(min_value=-(2**70), max_value=2**70), max_size=40),
    _json,
)
_datatype = st.sampled_from([*DATATYPES, "BYTES", "int8", ""]) | _json
_input = st.fixed_dictionaries(
    {"name": st.sampled_from(["input", ""]) | _json},
    optional={
        "datatype": _datatype,
        "shape": _shape,
        "data": _json | st.lists(st.integers(-300, 300), max_size=40),
        "parameters": st.fixed_dictionaries(
            {},
            optional={
                "binary_data_size": st.integers(-5, 200) | _json,
                "scale": _json,
                "zero_point": _json,
            },
        )
        | _json,
    },
)
_doc = st.fixed_dictionaries(
    {"inputs": st.lists(_input, max_size=3) | _json},
    optional={
        "id": _json,
        "parameters": st.dictionaries(st.sampled_from(["binary_data_output", "split", "x"]), _json)
        | _json,
        "outputs": st.lists(
            st.fixed_dictionaries({"name": _json}, optional={"parameters": _json}), max_size=3
        )
        | _json,
    },
)
_encoding = st.sampled_from([None, "gzip", "deflate", "identity", "br", "gzip, gzip, gzip", ""])


def _compress(raw: bytes, encoding: str | None) -> bytes:
    if encoding == "gzip":
        return gzip.compress(raw)
    if encoding == "deflate":
        return zlib.compress(raw)
    return raw


# -- properties ---------------------------------------------------------------------------


@FUZZ
@given(body=st.binary(max_size=2048), hlen=st.none() | st.text(max_size=8), enc=_encoding)
def test_arbitrary_bytes_are_a_request_or_a_4xx(
    body: bytes, hlen: str | None, enc: str | None
) -> None:
    headers = {}
    if hlen is not None:
        headers[HEADER_LENGTH] = hlen
    if enc is not None:
        headers["Content-Encoding"] = enc
    _decode(body, headers)


@FUZZ
@given(doc=_doc, tail=st.binary(max_size=64), enc=_encoding, binary=st.booleans())
def test_arbitrary_json_requests_are_a_request_or_a_4xx(
    doc: dict[str, Any], tail: bytes, enc: str | None, binary: bool
) -> None:
    head = json.dumps(doc).encode()
    headers: dict[str, str] = {}
    body = head
    if binary:
        headers[HEADER_LENGTH] = str(len(head))
        body = head + tail
    if enc is not None:
        headers["Content-Encoding"] = enc
    req = _decode(_compress(body, enc if enc in ("gzip", "deflate") else None), headers)
    if req is not None:  # what it accepted is consistent with what it declared
        for t in req.inputs:
            assert isinstance(t.data, np.ndarray)
            assert t.data.nbytes <= LIMIT


@FUZZ
@given(
    arrays=st.lists(
        st.tuples(
            st.sampled_from(sorted(set(DATATYPES) - {"BOOL"})),
            st.lists(st.integers(0, 5), min_size=1, max_size=3),
        ),
        min_size=1,
        max_size=3,
    ),
    binary=st.booleans(),
    enc=st.sampled_from([None, "gzip", "deflate"]),
)
def test_what_the_encoder_writes_decodes_exactly(
    arrays: list[tuple[str, list[int]]], binary: bool, enc: str | None
) -> None:
    rng = np.random.default_rng(len(arrays))
    tensors = {}
    for i, (dt, shape) in enumerate(arrays):
        x = rng.integers(0, 100, size=shape).astype(DATATYPES[dt])
        tensors[f"t{i}"] = x
    body, headers = encode_infer_request(tensors, binary=binary, compress=enc)
    req = decode_infer_request(body, headers, limit=LIMIT)
    for name, x in tensors.items():
        got = req.input(name).data
        assert got.dtype == x.dtype.newbyteorder("=") or got.dtype == x.dtype
        np.testing.assert_array_equal(got, x)


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(doc=_doc, enc=st.sampled_from([None, "gzip"]))
def test_memory_stays_within_a_small_multiple_of_the_limit(
    doc: dict[str, Any], enc: str | None
) -> None:
    body = _compress(json.dumps(doc).encode(), enc)
    tracemalloc.start()
    try:
        _decode(body, {"Content-Encoding": enc} if enc else {})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 40 * LIMIT + (1 << 20)


# -- the holes found by hand ---------------------------------------------------------------


def test_a_5000_digit_number_is_a_400() -> None:
    body = b'{"inputs": [{"name": "input", "datatype": "INT8", "shape": [1], "data": [1%s]}]}'
    with pytest.raises(ProtocolError, match="not valid JSON") as e:
        decode_infer_request(body % (b"0" * 5000))
    assert e.value.status == 400


def test_a_huge_shape_is_a_400_with_a_short_message() -> None:
    doc = {"inputs": [{"name": "input", "datatype": "INT8", "shape": [2**62] * 40, "data": []}]}
    with pytest.raises(ProtocolError, match="'shape' must be a list of at most 16") as e:
        decode_infer_request(json.dumps(doc).encode())
    assert len(e.value.message) < 400


def test_rows_are_capped_on_the_declared_shape_before_the_data_is_read() -> None:
    def doc(rows: int, data: Any) -> bytes:
        inp = {"name": "input", "datatype": "INT8", "shape": [rows, 2], "data": data}
        return json.dumps({"inputs": [inp]}).encode()

    assert decode_infer_request(doc(10, [0] * 20), max_rows=10).inputs[0].data.shape == (10, 2)
    with pytest.raises(ProtocolError, match="11 rows; this server takes at most 10") as e:
        decode_infer_request(doc(11, "not even numbers"), max_rows=10)
    assert e.value.status == 413


def test_a_gzip_bomb_allocates_about_the_limit_only() -> None:
    bomb = gzip.compress(b"0," * (50 << 20), 9)  # 100 MB of JSON-ish text in ~100 KB
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError) as e:
            decode_infer_request(bomb, {"Content-Encoding": "gzip"}, limit=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert e.value.status == 413
    assert peak < 4 << 20


def test_more_than_two_encodings_are_refused() -> None:
    raw = json.dumps({"inputs": []}).encode()
    body = gzip.compress(gzip.compress(gzip.compress(raw)))
    with pytest.raises(ProtocolError, match="more than 2 layers") as e:
        decode_infer_request(body, {"Content-Encoding": "gzip, gzip, gzip"})
    assert e.value.status == 415
