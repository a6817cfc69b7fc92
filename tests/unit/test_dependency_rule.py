"""The dependency rules (docs/architecture.md, ../shared/STYLE.md rules 1 and 2), checked on every module's imports
(function-level imports count too):

- web/ and worker/ import shared/, never each other; shared/ imports neither, except the module that starts every
  process and so wires everything together (WIRING);
- TensorFlow and Keras are imported only under worker/, and in the one module that loads a model file in a process of
  its own (TENSORFLOW_EXCEPTIONS);
- inside shared/, a package imports only packages of its own layer or a lower one (SHARED_LAYERS).

Each checker is a plain function of {module path: imported module names}, tested on synthetic violations too, so a
checker that stopped seeing violations fails here."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WIRING = {"shared/tools/cli.py"}  # may import worker/ and web/: it starts every process
TENSORFLOW = {"tensorflow", "keras"}
TENSORFLOW_EXCEPTIONS = {"shared/models/model_inspect.py"}  # run as `python -m`, a process of its own

# The layers of shared/, lowest first: a package may import its own layer and the ones below, never one above.
# `schemas` (request models, shared by web/ and the services) sits above the domain packages and below services.
SHARED_LAYERS = {
    # package    layer
    "core":      0,  # settings, sessions, tables, states, vocabularies, errors, the Celery app and dispatch
    "images":    1,  # image bytes to model inputs, manifests, datasets
    "models":    1,  # model code needing no TensorFlow: outputs, targets, a file's layers, vectors
    "search":    1,  # vector indexes and their holder
    "client":    1,  # the HTTP client and the remote commands: speaks the API, needs no database
    "schemas":   2,  # request models
    "services":  3,  # domain services: jobs, submission, registry, schedules, ...
    "tools":     4,  # the CLI, the demo, the local stack
}

Imports = dict[str, set[str]]  # module path relative to ROOT -> the dotted names it imports


def imported_names(path: Path) -> set[str]:
    return parse_imports(path.read_text(), path.relative_to(ROOT).with_suffix("").parts[:-1])


def parse_imports(source: str, package: tuple[str, ...]) -> set[str]:
    """The dotted names a module of `package` imports, at any depth; `from a.b import c` gives `a.b.c` (c may be a
    module); relative imports are resolved against `package`."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the module's own package
                base = ".".join([*package[:len(package) - node.level + 1], *filter(None, [base])])
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def imports_of(*packages: str) -> Imports:
    return {str(path.relative_to(ROOT)): imported_names(path)
            for package in packages for path in sorted((ROOT / package).rglob("*.py"))}


def _top(name: str) -> str:
    return name.split(".")[0]


def cross_package_violations(imports: Imports) -> dict[str, list[str]]:
    forbidden = {"web": {"worker"}, "worker": {"web"}, "shared": {"web", "worker"}}
    broken = {}
    for module, names in imports.items():
        if module in WIRING:
            continue
        bad = {_top(n) for n in names} & forbidden.get(_top(module.replace("/", ".")), set())
        if bad:
            broken[module] = sorted(bad)
    return broken


def tensorflow_violations(imports: Imports) -> dict[str, list[str]]:
    broken = {}
    for module, names in imports.items():
        if module.startswith("worker/") or module in TENSORFLOW_EXCEPTIONS:
            continue
        bad = {_top(n) for n in names} & TENSORFLOW
        if bad:
            broken[module] = sorted(bad)
    return broken


def _shared_package(dotted: str) -> str | None:
    parts = dotted.split(".")
    return parts[1] if len(parts) > 2 and parts[0] == "shared" else None


def layering_violations(imports: Imports) -> dict[str, list[str]]:
    """Modules of shared/ that import a package of a higher layer, or sit in (or import) a package the table lacks."""
    broken = {}
    for module, names in imports.items():
        own = _shared_package(module.removesuffix(".py").replace("/", "."))
        if own is None:
            continue
        bad = sorted(n for n in names if (other := _shared_package(n)) is not None and other != own
                     and (own not in SHARED_LAYERS or other not in SHARED_LAYERS
                          or SHARED_LAYERS[other] > SHARED_LAYERS[own]))
        if bad:
            broken[module] = bad
    return broken


# --------------------------------------------------------------------------------------------- the real code


def test_web_worker_and_shared_import_only_what_the_rule_allows():
    assert cross_package_violations(imports_of("web", "worker", "shared")) == {}


def test_tensorflow_and_keras_are_imported_only_under_worker():
    assert tensorflow_violations(imports_of("shared", "web", "migrations")) == {}


def test_inside_shared_no_package_imports_a_higher_layer():
    assert layering_violations(imports_of("shared")) == {}


def test_every_package_of_shared_has_a_layer():
    packages = {p.name for p in (ROOT / "shared").iterdir() if (p / "__init__.py").is_file()}
    assert packages - set(SHARED_LAYERS) == set()


def test_the_rules_are_checked_on_real_modules():
    real = imports_of("shared", "web", "worker")
    assert sum(m.startswith("shared/") for m in real) > 10 and sum(m.startswith("web/") for m in real) > 5
    assert any(_top(n) == "worker" for n in real["shared/tools/cli.py"])  # the wiring module does what it may
    assert any(_top(n) == "keras" for n in real["shared/models/model_inspect.py"])  # the one exception
    assert any(_top(n) in TENSORFLOW for m, names in real.items() if m.startswith("worker/") for n in names)
    assert any(n.startswith("shared.core.") for n in real["shared/services/jobs.py"])  # dotted names, not packages


# --------------------------------------------------------------------------------------------- the checkers


@pytest.mark.parametrize("module, names", [
    ("web/api_jobs.py", {"worker.tasks"}),
    ("worker/run_chunk.py", {"web.errors.ImgqHTTPError"}),
    ("shared/services/jobs.py", {"worker.chunk_lifecycle.claim"}),
    ("shared/tools/demo.py", {"worker.training.architectures.vgg_regressor"}),  # only cli.py wires
])
def test_the_cross_package_checker_sees_a_violation(module, names):
    assert cross_package_violations({module: names}) == {module: [_top(next(iter(names)))]}


@pytest.mark.parametrize("module, names", [
    ("shared/models/architectures.py", {"keras.layers"}),
    ("shared/services/similar.py", {"tensorflow"}),
    ("web/app.py", {"keras"}),
    ("migrations/env.py", {"tensorflow.keras"}),
])
def test_the_tensorflow_checker_sees_a_violation(module, names):
    assert list(tensorflow_violations({module: names})) == [module]


def test_the_tensorflow_checker_allows_worker_and_the_exception():
    assert tensorflow_violations({"worker/training/models.py": {"keras.layers"},
                                  "worker/model_cache.py": {"tensorflow"},
                                  "shared/models/model_inspect.py": {"keras"}}) == {}


@pytest.mark.parametrize("module, imported", [
    ("shared/core/db.py", "shared.services.jobs"),
    ("shared/core/vocab.py", "shared.images.imaging.Preprocessing"),
    ("shared/images/datasets.py", "shared.schemas.train.TrainRequest"),
    ("shared/search/index_holder.py", "shared.services.index_jobs.latest"),
    ("shared/schemas/train.py", "shared.services.train_jobs"),
    ("shared/services/jobs.py", "shared.tools.cli"),
    ("shared/newpackage/x.py", "shared.core.db"),  # a package the table does not place
])
def test_the_layering_checker_sees_a_higher_layer_imported(module, imported):
    assert layering_violations({module: {imported}}) == {module: [imported]}


def test_the_layering_checker_allows_the_same_layer_and_lower_ones():
    assert layering_violations({
        "shared/services/jobs.py": {"shared.core.db", "shared.schemas.jobs.ScoreRequest", "shared.services.quotas"},
        "shared/schemas/train.py": {"shared.core.vocab", "shared.images.datasets.DatasetSpec", "shared.models.targets"},
        "shared/search/vector_index.py": {"shared.core.vocab", "shared.models.vectors", "numpy"},
        "shared/tools/cli.py": {"shared.services.jobs", "worker.tasks"},
    }) == {}


def test_imports_inside_functions_and_relative_imports_are_seen():
    source = ("def late():\n    import tensorflow as tf\n    from ..services import jobs\n    from . import db\n"
              "    return tf, jobs, db\n")
    names = parse_imports(source, ("shared", "core"))
    assert {"tensorflow", "shared.services.jobs", "shared.core.db"} <= names
    module = "shared/core/late.py"
    assert list(tensorflow_violations({module: names})) == [module]
    assert layering_violations({module: names}) == {module: ["shared.services.jobs"]}
