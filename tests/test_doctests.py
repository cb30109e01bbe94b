"""Every docstring example in the package runs here (CI runs pytest only, so this is how doctests run in CI).

One test per docstring that has examples, found with `doctest.DocTestFinder` over every module of `mechscope`
(`__main__` excepted: importing it runs the CLI). Three kinds:

* most examples are self-contained and run as written;
* ON_TINY: examples that use a model `m` / `model`, a set `ts` or a `graph` without loading them; they run on the
  tiny test models (conftest.py's `tiny` and `tiny_tc`, llama and gemma3) supplied as globals. A line whose output
  only the real model gives stays `# doctest: +SKIP` in the docstring, with the reason beside it;
* REAL: examples that load the bundled real model or its shipped feature index themselves; marked `real`, as
  tests/test_real.py (a fresh checkout without them fails rather than skips).

Examples are checked with ELLIPSIS on, as `python -m doctest` users would write them.
"""

from __future__ import annotations

import copy
import doctest
import importlib
import io
import pkgutil

import pytest

import mechscope

ON_TINY = {
    "mechscope.attribution.qk_choice.choose_head",
    "mechscope.attribution.validate",
    "mechscope.interventions.controls.random_like",
    "mechscope.interventions.swap.plan_swap",
    "mechscope.lens.suite.Suite.for_model",
    "mechscope.models.adapter.ModelAdapter.forward_cached",
    "mechscope.transcoders.circuit_tracer.export_circuit_tracer",
}
REAL = {
    "mechscope.attribution.attribute.attribute",
    "mechscope.features.FeatureIndex",
    "mechscope.features.dashboard",
    "mechscope.models.adapter.ModelAdapter",
    "mechscope.models.adapter.load_model",
}
# the examples that run (not +SKIP) when this was written: a floor, so docstring examples cannot quietly stop running
MIN_EXAMPLES_RUN = 200


IMPORT_ERRORS: dict[str, str] = {}  # module -> why it did not import (a missing extra): a failing test, not a skip


def _collect() -> dict[str, doctest.DocTest]:
    finder = doctest.DocTestFinder()
    found = {}
    for info in pkgutil.walk_packages(mechscope.__path__, "mechscope.", onerror=lambda name: None):
        if info.name.endswith("__main__"):
            continue
        try:
            module = importlib.import_module(info.name)
        except ImportError as e:
            IMPORT_ERRORS[info.name] = str(e)
            continue
        for t in finder.find(module, info.name):
            if t.examples:
                found[t.name] = t
    return found


DOCTESTS = _collect()


def _run(t: doctest.DocTest, extra_globals: dict | None = None) -> doctest.TestResults:
    """Run one docstring's examples in a fresh copy of its module's globals (plus `extra_globals`)."""
    t = copy.copy(t)
    t.globs = {**t.globs, **(extra_globals or {})}
    out = io.StringIO()
    res = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS).run(t, out=out.write, clear_globs=True)
    if res.failed:
        pytest.fail(f"{res.failed} of {res.attempted} examples failed:\n{out.getvalue()}", pytrace=False)
    return res


def _params(names) -> list:
    return [pytest.param(n, marks=[pytest.mark.real] if n in REAL else [], id=n) for n in sorted(names)]


@pytest.mark.parametrize("name", _params(set(DOCTESTS) - ON_TINY))
def test_docstring_examples(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an example that writes a file writes it here
    _run(DOCTESTS[name])


@pytest.mark.parametrize("name", _params(ON_TINY))
def test_docstring_examples_on_tiny_models(name, tiny, tiny_tc, tmp_path, monkeypatch):
    from mechscope.attribution import AttributionConfig, attribute

    monkeypatch.chdir(tmp_path)
    graph = attribute(tiny, tiny_tc, "Dallas is in the state of", AttributionConfig(max_feature_nodes=64))
    _run(DOCTESTS[name], {"m": tiny, "model": tiny, "ts": tiny_tc, "graph": graph})


def test_every_module_imports():
    """Every module's examples were collected: none failed to import (with the test extra installed)."""
    if IMPORT_ERRORS:
        lines = "\n".join(f"{k}: {v}" for k, v in IMPORT_ERRORS.items())
        pytest.fail(f"modules whose docstrings were not run: pip install -e '.[test]'\n{lines}", pytrace=False)


def test_every_listed_docstring_exists_and_examples_run():
    """The lists above name docstrings that exist, and the examples that run do not shrink below the floor."""
    assert (ON_TINY | REAL) <= set(DOCTESTS), sorted((ON_TINY | REAL) - set(DOCTESTS))
    assert not ON_TINY & REAL
    run = sum(not e.options.get(doctest.SKIP) for t in DOCTESTS.values() for e in t.examples)
    assert run >= MIN_EXAMPLES_RUN, f"{run} docstring examples run, fewer than {MIN_EXAMPLES_RUN}"
