"""The exit heads' average pools of an INT8 QDQ graph run in float.

ONNX Runtime fuses ``DequantizeLinear -> AveragePool -> QuantizeLinear`` into its
``QLinearAveragePool``, which on a stage's feature map costs about twice the float pool
(measured on the Fashion-MNIST VGG export, x86: 11 us against 5 us of a stage's 81). The
feature map is dequantized for the pool either way; without the Q/DQ pair after the pool, the
pooled values stay float until the head's Flatten is quantized for its QGemm, so the head's
arithmetic stays INT8 and only the pooled vector skips one rounding.
"""

from __future__ import annotations

import re
from typing import Any

from .._onnx import _consumers

__all__ = ["float_head_pools"]

_HEAD_POOL = re.compile(r"^ek_head\d+_pool$")


def float_head_pools(proto: Any) -> int:
    """Drop the Q/DQ pair after each head AveragePool of ``proto`` (in place); returns how
    many pools now run in float. Pools of the user's model are left as they are."""
    graph = proto.graph
    users = _consumers(graph)
    outputs = {o.name for o in graph.output}
    done = 0
    for pool in [n for n in graph.node if n.op_type == "AveragePool"]:
        out = pool.output[0]
        if not _HEAD_POOL.match(out) or out in outputs:
            continue
        q = users.get(out, [])
        if len(q) != 1 or q[0].op_type != "QuantizeLinear" or q[0].output[0] in outputs:
            continue
        dqs = users.get(q[0].output[0], [])
        if not dqs or any(d.op_type != "DequantizeLinear" or d.output[0] in outputs for d in dqs):
            continue
        for d in dqs:
            for u in users.get(d.output[0], []):
                for i, name in enumerate(u.input):
                    if name == d.output[0]:
                        u.input[i] = out
        for n in (q[0], *dqs):
            graph.node.remove(n)
        done += 1
    return done
