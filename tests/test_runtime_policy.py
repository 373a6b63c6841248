"""The policy contract from a user's side: README's "Writing a policy" example, run as
written (public names only), and a policy that offloads, on a real package."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgekit
from edgekit.data import load_digits
from edgekit.runtime import NEVER, Decision, Needs, Outcome, Policy

README = Path(__file__).resolve().parents[1] / "README.md"


def _example() -> str:
    text = README.read_text()
    at = text.index("### Writing a policy")
    m = re.search(r"```python\n(.*?)```", text[at:], re.S)
    assert m, "README's 'Writing a policy' section has no python block"
    return m.group(1)


def test_the_example_names_only_public_api() -> None:
    code = _example()
    assert "._" not in code and "import edgekit" in code
    assert "def select(self, ready: bool) -> Decision" in code
    assert "def observe(self, outcome: Outcome) -> None" in code


@pytest.mark.slow
def test_readme_policy_runs_as_written(digits_pkg: Path) -> None:
    d = load_digits()
    code = _example().replace('"build/fmnist.edgepkg"', repr(str(digits_pkg)))
    ns: dict[str, Any] = {"image": d.x_test[0]}
    exec(compile(code, str(README), "exec"), ns)
    with edgekit.load(digits_pkg, policy="threshold:0.9") as m:
        same = m.predict(d.x_test[0])  # its first decision is threshold 0.9
    assert ns["pred"][:4] == same[:4]
    # Its behaviour, through the model: a hard input makes the next 20 strict.
    pol = ns["Hysteresis"]()
    with edgekit.load(digits_pkg, policy=pol) as m:
        seen = []
        for x in d.x_test[:300]:
            p = m.predict(x)
            seen.append((p.exit, pol.strict))
        stats = m.stats()
    assert sum(stats["exit_histogram"]) == 300 and stats["policy"] == "hysteresis"
    assert any(e == 3 and s == 20 for e, s in seen), "a last-exit input sets the strict run"
    assert any(e < 3 for e, _ in seen), "confident inputs still stop early"


class Recorder(Policy):
    """Records every outcome; stops at exit 1 always (to check what the model reports)."""

    name = "recorder"
    needs = Needs(cost="macs")

    def __init__(self) -> None:
        self.outcomes: list[tuple[int, list[float], list[float], float, float]] = []

    def select(self, ready: bool) -> Decision:
        return Decision((NEVER, 0.0) + (NEVER,) * (self.n_exits - 2))

    def observe(self, o: Outcome) -> None:
        self.outcomes.append((o.exit, list(o.confidences[: o.exit + 1]), list(o.costs),
                              o.paid, o.latency_ms))  # fmt: skip


@pytest.mark.slow
def test_outcome_reports_what_happened(digits_pkg: Path) -> None:
    d = load_digits()
    pol = Recorder()
    with edgekit.load(digits_pkg, policy=pol) as m:
        preds = [m.predict(x) for x in d.x_test[:20]]
        macs = [e.macs_fraction for e in m.manifest.exits]
    assert all(p.exit == 1 and p.stages_run == 2 for p in preds)
    for (k, confs, costs, paid, ms), p in zip(pol.outcomes, preds):
        assert k == 1 and len(confs) == 2 and confs[1] == pytest.approx(p.score)
        assert costs == pytest.approx(macs) and paid == pytest.approx(macs[1])  # cost="macs"
        assert ms == pytest.approx(p.latency_ms)


def test_a_policy_without_select_says_so() -> None:
    class Empty(Policy):
        pass

    pol = Empty()
    pol.bind(3, [0.2, 0.5, 1.0])
    with pytest.raises(NotImplementedError):
        pol.select(False)
    assert np.isclose(pol.macs_fractions[-1], 1.0) and pol.n_exits == 3
