"""The KServe v2 codec shared by the offload client and the server (no server here)."""

from __future__ import annotations

import gzip
import json
import zlib

import numpy as np
import pytest

from edgekit._kserve import (  # internal: the KServe v2 wire codec, unit by unit
    HEADER_LENGTH,
    Tensor,
    choose_encoding,
    compress,
    decode_error,
    decode_infer_request,
    decode_infer_response,
    decompress,
    encode_infer_request,
    encode_infer_response,
    encode_split_request,
    error_body,
    infer_path,
    model_name,
    parse_split_model,
    read_infer_response,
    to_8bit,
)
from edgekit.serve import ProtocolError

RNG = np.random.default_rng(0)


def _feats(shape: tuple[int, ...] = (2, 7, 7, 8), dtype: str = "int8") -> np.ndarray:
    info = np.iinfo(dtype)
    return RNG.integers(info.min, info.max + 1, size=shape, dtype=np.int64).astype(dtype)


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("encoding", [None, "deflate", "gzip"])
def test_request_round_trip(binary: bool, encoding: str | None) -> None:
    x = _feats()
    body, headers = encode_split_request(
        x,
        scale=0.05,
        zero_point=-3,
        package_sha256="ab" * 32,
        request_id="r1",
        binary=binary,
        compress=encoding,
    )
    assert (HEADER_LENGTH in headers) == binary
    assert headers.get("Content-Encoding") == encoding
    req = decode_infer_request(body, headers)
    assert req.id == "r1"
    assert req.parameters["package_sha256"] == "ab" * 32
    assert req.binary_output is binary and req.outputs is None  # outputs like the inputs
    t = req.input("input")
    assert t.data.dtype == np.int8 and t.data.shape == x.shape
    np.testing.assert_array_equal(t.data, x)
    assert t.parameters == {"scale": 0.05, "zero_point": -3}


def test_binary_layout_is_tritons() -> None:
    """JSON header, then raw bytes; the header length is the JSON's length."""
    x = _feats((1, 3), "uint8")
    body, headers = encode_infer_request({"input": x}, binary=True)
    n = int(headers[HEADER_LENGTH])
    head = json.loads(body[:n])
    assert head["inputs"][0] == {
        "name": "input",
        "datatype": "UINT8",
        "shape": [1, 3],
        "parameters": {"binary_data_size": 3},
    }
    assert body[n:] == x.tobytes()
    assert int(headers["Content-Length"]) == len(body)


def test_json_data_accepts_nested_and_flat_lists() -> None:
    for data in ([[1, 2], [3, 4]], [1, 2, 3, 4]):
        doc = {"inputs": [{"name": "input", "datatype": "INT8", "shape": [2, 2], "data": data}]}
        req = decode_infer_request(json.dumps(doc).encode(), {})
        np.testing.assert_array_equal(req.input("input").data, [[1, 2], [3, 4]])


def test_requested_outputs_and_binary_flags() -> None:
    body, headers = encode_infer_request(
        {"input": _feats((1, 4))}, outputs=["confidence"], binary_outputs=False
    )
    req = decode_infer_request(body, headers)
    got = req.wanted(("logits", "confidence"))
    assert [(o.name, o.binary) for o in got] == [("confidence", False)]
    doc = {
        "parameters": {"binary_data_output": True},
        "inputs": [{"name": "input", "datatype": "INT8", "shape": [1], "data": [0]}],
    }
    req = decode_infer_request(json.dumps(doc).encode())
    assert all(o.binary for o in req.wanted(("logits", "confidence")))
    with pytest.raises(ProtocolError, match="unknown output 'probs'"):
        decode_infer_request(
            *encode_infer_request({"input": _feats((1,))}, outputs=["probs"])
        ).wanted(("logits", "confidence"))


@pytest.mark.parametrize("binary", [True, False, ("logits",)])
@pytest.mark.parametrize("encoding", [None, "gzip"])
def test_response_round_trip(binary: bool | tuple[str, ...], encoding: str | None) -> None:
    logits = RNG.normal(size=(3, 10)).astype(np.float32)
    conf = RNG.uniform(size=3).astype(np.float32)
    body, headers = encode_infer_response(
        "pkg-split1",
        {"logits": logits, "confidence": conf},
        request_id="abc",
        binary=binary,
        compress=encoding,
    )
    res = read_infer_response(body, headers)
    assert res.model_name == "pkg-split1" and res.id == "abc"
    out = decode_infer_response(body, headers)
    # exact: float32 values survive JSON (repr of the double) and binary alike
    np.testing.assert_array_equal(out["logits"], logits)
    np.testing.assert_array_equal(out["confidence"], conf)
    assert out["logits"].dtype == np.float32


def test_headers_are_case_insensitive() -> None:
    body, headers = encode_split_request(_feats((1, 5)), scale=0.1, zero_point=0, compress="gzip")
    lower = {k.lower(): v for k, v in headers.items()}
    np.testing.assert_array_equal(
        decode_infer_request(body, lower).input("input").data,
        decode_infer_request(body, headers).input("input").data,
    )


def test_auto_compression_only_when_it_pays() -> None:
    zeros = np.zeros((1, 14, 14, 32), np.int8)  # ReLU outputs at the zero point
    body, headers = encode_split_request(zeros, scale=0.1, zero_point=0, compress="auto")
    assert headers["Content-Encoding"] == "deflate" and len(body) < zeros.size / 10
    noise = _feats((1, 14, 14, 32))
    body, headers = encode_split_request(noise, scale=0.1, zero_point=0, compress="auto")
    assert "Content-Encoding" not in headers and len(body) > noise.size


def test_int8_uint8_conversion_keeps_values() -> None:
    x = np.arange(-128, 128, dtype=np.int16).astype(np.int8)
    u = to_8bit(x, "uint8")
    # real = s * (q - z): int8 zp z == uint8 zp z + 128
    z = -5
    np.testing.assert_array_equal(x.astype(int) - z, u.astype(int) - (z + 128))
    np.testing.assert_array_equal(to_8bit(u, "int8"), x)
    assert to_8bit(x, "int8") is x
    with pytest.raises(ProtocolError):
        to_8bit(x.astype(np.int16), "uint8")


def test_model_names() -> None:
    assert model_name("fmnist", 2) == "fmnist-split2"
    assert parse_split_model("fmnist-split2", "fmnist") == 2
    assert parse_split_model("fmnist", "fmnist") is None
    for bad in ("fmnist-split", "fmnist-splitx", "other-split1", "fmnist-split-1", "fmnist-split١"):
        with pytest.raises(ProtocolError) as e:
            parse_split_model(bad, "fmnist")
        assert e.value.status == 404
    assert infer_path("m") == "/v2/models/m/infer"
    assert infer_path("m", "1") == "/v2/models/m/versions/1/infer"


def test_compression_formats_and_limits() -> None:
    data = b"x" * 10_000
    assert decompress(zlib.compress(data), "deflate") == data
    assert decompress(gzip.compress(data), "gzip") == data
    assert decompress(gzip.compress(data), "x-gzip") == data
    raw = zlib.compressobj(6, zlib.DEFLATED, -15)
    assert decompress(raw.compress(data) + raw.flush(), "deflate") == data  # raw deflate too
    assert decompress(compress(data, "gzip"), "GZIP") == data
    with pytest.raises(ProtocolError) as e:
        decompress(zlib.compress(data), "deflate", limit=1000)  # a small zip bomb
    assert e.value.status == 413
    with pytest.raises(ProtocolError, match="not valid deflate"):
        decompress(b"not compressed", "deflate")
    with pytest.raises(ProtocolError, match="not valid gzip"):
        decompress(gzip.compress(data)[:-12], "gzip")  # truncated
    with pytest.raises(ProtocolError) as e:
        decompress(data, "br")
    assert e.value.status == 415


def test_choose_encoding() -> None:
    assert choose_encoding(None) is None
    assert choose_encoding("gzip, deflate") == "gzip"
    assert choose_encoding("deflate") == "deflate"
    assert choose_encoding("gzip;q=0.2, deflate;q=0.8") == "deflate"
    assert choose_encoding("gzip;q=0, br") is None
    assert choose_encoding("identity") is None


def test_error_bodies() -> None:
    assert decode_error(error_body("bad shape")) == "bad shape"
    assert decode_error(b"<html>oops</html>") == "<html>oops</html>"
    with pytest.raises(ProtocolError, match="server answered with an error: nope"):
        decode_infer_response(error_body("nope"), {})


def _req(inputs: list[object], **extra: object) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


def _inp(**kw: object) -> dict[str, object]:
    d: dict[str, object] = {"name": "input", "datatype": "INT8", "shape": [1, 2], "data": [1, 2]}
    d.update(kw)
    return d


@pytest.mark.parametrize(
    ("body", "headers", "match"),
    [
        (b"{not json", {}, "not valid JSON"),
        (b"[1, 2]", {}, "must be an object"),
        (_req([]), {}, "non-empty 'inputs'"),
        (json.dumps({"inputs": "x"}).encode(), {}, "non-empty 'inputs'"),
        (_req([_inp(name=3)]), {}, "needs a 'name'"),
        (_req([_inp(shape=[1, -2])]), {}, "integers in 0..2147483647"),
        (_req([_inp(shape=[1, True])]), {}, "integers in 0..2147483647"),
        (_req([_inp(shape="1x2")]), {}, "integers in 0..2147483647"),
        (_req([_inp(datatype="INT4")]), {}, "unknown or unsupported datatype 'INT4'"),
        (_req([_inp(datatype="BYTES")]), {}, "unsupported datatype 'BYTES'"),
        (_req([_inp(data=[1, 2, 3])]), {}, "has 3 values but shape"),
        (_req([_inp(data=[1, 300])]), {}, "out of range for INT8"),
        (_req([_inp(data=[1.5, 2])]), {}, "float64 values"),
        (_req([_inp(data=["a", "b"])]), {}, "values"),
        (_req([_inp(data=[[1], [2, 3]])]), {}, "not a \\(nested\\) list"),
        (_req([{"name": "input", "datatype": "INT8", "shape": [1]}]), {}, "neither 'data'"),
        (_req([_inp()], id=5), {}, "'id' must be a string"),
        (_req([_inp(parameters=[1])]), {}, "'parameters' must be an object"),
        (_req([_inp()], outputs=[{"nom": 1}]), {}, "needs a 'name'"),
        (_req([_inp()], outputs={"a": 1}), {}, "'outputs' must be a list"),
        (
            _req([_inp()], outputs=[{"name": "logits", "parameters": {"binary_data": 1}}]),
            {},
            "binary_data must be true or false",
        ),
        (_req([_inp()], parameters={"binary_data_output": "yes"}), {}, "binary_data_output"),
        (_req([_inp()]), {HEADER_LENGTH: "abc"}, "must be an integer"),
        (_req([_inp()]), {HEADER_LENGTH: "100000"}, "the body has"),
        (_req([_inp()]), {HEADER_LENGTH: "0"}, "the body has"),
        (_req([_inp()]), {HEADER_LENGTH: "5"}, "not valid JSON"),
    ],
)
def test_bad_requests(body: bytes, headers: dict[str, str], match: str) -> None:
    with pytest.raises(ProtocolError, match=match) as e:
        decode_infer_request(body, headers)
    assert e.value.status == 400


def test_absurd_nesting_is_a_400_not_a_crash() -> None:
    deep = b"[" * 200_000 + b"]" * 200_000
    with pytest.raises(ProtocolError, match="not valid JSON"):
        decode_infer_request(b'{"inputs": ' + deep + b"}")
    data = "[" * 5000 + "1" + "]" * 5000
    doc = '{"inputs": [{"name": "input", "datatype": "INT8", "shape": [1], "data": %s}]}'
    with pytest.raises(ProtocolError):
        decode_infer_request((doc % data).encode())


def _binary(size: object, payload: bytes, **inp: object) -> tuple[bytes, dict[str, str]]:
    d = _inp(parameters={"binary_data_size": size}, **inp)
    del d["data"]
    head = json.dumps({"inputs": [d]}).encode()
    return head + payload, {HEADER_LENGTH: str(len(head))}


@pytest.mark.parametrize(
    ("size", "payload", "match"),
    [
        (3, b"abc", "needs 2"),  # size does not match the shape
        (2, b"a", "ends before its 2 bytes"),  # body too short
        (2, b"abcd", "2 bytes after the inputs"),  # trailing garbage
        (-1, b"ab", "non-negative integer"),
        ("2", b"ab", "non-negative integer"),
    ],
)
def test_bad_binary_sizes(size: object, payload: bytes, match: str) -> None:
    body, headers = _binary(size, payload)
    with pytest.raises(ProtocolError, match=match):
        decode_infer_request(body, headers)


def test_binary_and_json_data_together_is_refused() -> None:
    d = _inp(parameters={"binary_data_size": 2})
    head = json.dumps({"inputs": [d]}).encode()
    with pytest.raises(ProtocolError, match="both 'data' and binary_data_size"):
        decode_infer_request(head + b"ab", {HEADER_LENGTH: str(len(head))})


def test_binary_body_without_header_says_so() -> None:
    body, _ = encode_split_request(_feats((1, 4)), scale=0.1, zero_point=0)
    with pytest.raises(ProtocolError, match=HEADER_LENGTH):
        decode_infer_request(body, {})


def test_decompressed_size_limit() -> None:
    body, headers = encode_split_request(
        np.zeros((1, 100_000), np.int8), scale=0.1, zero_point=0, compress="deflate"
    )
    assert len(body) < 1000
    with pytest.raises(ProtocolError) as e:
        decode_infer_request(body, headers, limit=50_000)
    assert e.value.status == 413


def test_several_binary_inputs_in_order() -> None:
    a, b = _feats((2, 3)), np.arange(4, dtype=np.float32)
    body, headers = encode_infer_request([Tensor("a", a), Tensor("b", b, {"k": 1})])
    req = decode_infer_request(body, headers)
    np.testing.assert_array_equal(req.input("a").data, a)
    np.testing.assert_array_equal(req.input("b").data, b)
    assert req.input("b").parameters == {"k": 1}
    with pytest.raises(ProtocolError, match="no input named 'c'"):
        req.input("c")


def test_split_request_refuses_wide_tensors() -> None:
    with pytest.raises(ProtocolError, match="int8 or uint8"):
        encode_split_request(np.zeros(3, np.float32), scale=1.0, zero_point=0)
