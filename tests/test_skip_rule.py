"""The skip rule in conftest.py: under CI every skip fails unless SKIPS_ALLOWED lists its reason.

Each case runs a tiny inner suite (pytest's ``pytester``) with conftest.py's own hooks and reads
its outcomes, with ``CI`` set to what a runner might have.
"""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

TESTS = Path(__file__).resolve().parent


def _load_conftest() -> types.ModuleType:
    """tests/conftest.py as a module of its own (the inner runs import their own conftest)."""
    spec = importlib.util.spec_from_file_location("_edgekit_tests_conftest", TESTS / "conftest.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


RULE = _load_conftest()
#: The rule's hooks, as a plugin for the inner runs.
RULE_PLUGIN = types.SimpleNamespace(
    pytest_runtest_makereport=RULE.pytest_runtest_makereport,
    pytest_make_collect_report=RULE.pytest_make_collect_report,
)
#: A reason CI may skip (the first allowed pattern's real reason).
ALLOWED_REASON = "tflite_runtime is not installed (the tflite backend)"

INNER = f"""
import sys
import pytest
sys.path.insert(0, {str(TESTS)!r})


def test_passes():
    pass


def test_plain_skip():
    pytest.skip("the frobnicator is missing")


def test_allowed_skip():
    pytest.skip({ALLOWED_REASON!r})


@pytest.mark.skipif(True, reason="a skipif mark")
def test_skipif_mark():
    pass


@pytest.fixture
def needs_thing():
    pytest.skip("a fixture that skips")


def test_fixture_skip(needs_thing):
    pass


def test_need_helper():
    from _sshd import need

    need(False, "need() said no")


def test_unavailable_helper():
    from _devices_fixtures import unavailable

    unavailable("no qemu here")


@pytest.mark.xfail(reason="a known bug", strict=True)
def test_xfail():
    assert False
"""


def _run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str | None, **files: str
) -> pytest.RunResult:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    if files:
        pytester.makepyfile(**files)
    return pytester.runpytest("-rsfE", "-p", "no:cacheprovider", plugins=[RULE_PLUGIN])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        ("True", True),
        ("1", True),
        ("false", False),
        ("0", False),
        ("", False),
        ("yes", False),
        (" true", False),
        (None, False),
    ],
)
def test_what_counts_as_ci(
    monkeypatch: pytest.MonkeyPatch, value: str | None, expected: bool
) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert RULE.in_ci() is expected


def test_every_allowed_pattern_says_why_and_the_reason_used_here_matches() -> None:
    assert RULE.SKIPS_ALLOWED, "the allow-list is where CI's permitted skips are written"
    for pattern, why in RULE.SKIPS_ALLOWED.items():
        assert len(why) > 20, pattern
    assert RULE.skip_allowed(ALLOWED_REASON) is not None
    assert RULE.skip_allowed("the frobnicator is missing") is None


@pytest.mark.parametrize("ci", ["true"])  # the other spellings: test_what_counts_as_ci
def test_under_ci_every_skip_fails_but_the_allowed_one(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str
) -> None:
    res = _run(pytester, monkeypatch, ci, test_inner=INNER)
    res.assert_outcomes(passed=1, skipped=1, failed=3, errors=2, xfailed=1)  # errors: in setup
    res.stdout.fnmatch_lines_random(
        [
            "FAILED test_inner.py::test_plain_skip*",
            "ERROR test_inner.py::test_skipif_mark*",
            "ERROR test_inner.py::test_fixture_skip*",
            "FAILED test_inner.py::test_need_helper*",
            "FAILED test_inner.py::test_unavailable_helper*",
        ]
    )
    out = res.stdout.str()
    for reason in (
        "the frobnicator is missing",
        "a skipif mark",
        "a fixture that skips",
        "need() said no",
        "virtual device unavailable: no qemu here",
    ):
        assert f"skipped under CI, which must run it: {reason}" in out, reason
    res.stdout.fnmatch_lines([f"SKIPPED * {ALLOWED_REASON}"])


@pytest.mark.parametrize("ci", ["false", "yes"])  # all the others: test_what_counts_as_ci
def test_outside_ci_skips_stay_skips_with_their_reason(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str | None
) -> None:
    res = _run(pytester, monkeypatch, ci, test_inner=INNER)
    res.assert_outcomes(passed=1, skipped=6, xfailed=1)
    res.stdout.fnmatch_lines_random(
        [
            "SKIPPED * the frobnicator is missing",
            "SKIPPED * a skipif mark",
            "SKIPPED * a fixture that skips",
            "SKIPPED * need() said no",
            "SKIPPED * virtual device unavailable: no qemu here",
        ]
    )


MODULE_SKIP = """
import pytest
pytest.skip("the broker is not installed", allow_module_level=True)

def test_never_runs():
    pass
"""
IMPORTORSKIP = """
import pytest
pytest.importorskip("edgekit_no_such_module_anywhere")

def test_never_runs():
    pass
"""


def test_a_module_skipped_at_collection_fails_under_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    reasons = ("the broker is not installed", "could not import 'edgekit_no_such_module_anywhere'")
    res = _run(pytester, monkeypatch, "true", test_mod=MODULE_SKIP, test_imp=IMPORTORSKIP)
    assert res.ret == pytest.ExitCode.INTERRUPTED  # collection errors: nothing runs
    res.assert_outcomes(errors=2)
    for reason in reasons:
        assert f"skipped under CI, which must run it: {reason}" in res.stdout.str(), reason

    res = _run(pytester, monkeypatch, "false")  # the same two files
    assert res.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    res.assert_outcomes(skipped=2)
    res.stdout.fnmatch_lines_random([f"SKIPPED * {reason}*" for reason in reasons])


def test_the_rule_is_on_in_this_run(request: pytest.FixtureRequest) -> None:
    """The suite itself runs under the rule (conftest.py is this directory's conftest)."""
    hooks = request.config.pluginmanager.hook.pytest_runtest_makereport.get_hookimpls()
    assert any(getattr(h.plugin, "__file__", None) == str(TESTS / "conftest.py") for h in hooks)
