"""The shape of the code: no import circles, a registry that imports nothing (but the leaf
``fields``) and that registration order cannot corrupt, one vocabulary for every consumer
of the IR."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "mfdsl"


# --- imports ----------------------------------------------------------------------------

def _modules() -> Dict[str, Path]:
    mods = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


def imports() -> List[Tuple[str, Path, int, str]]:
    """(module, its file, line, imported mfdsl module) for every import of every module,
    counting imports inside functions.

    ``from pkg import sub`` imports ``pkg.sub``; the package itself only when a name (not a
    module) is taken from it. Python imports parent packages first in any case.
    """
    mods = _modules()
    found: List[Tuple[str, Path, int, str]] = []
    for name, path in mods.items():
        is_pkg = path.name == "__init__.py"
        base = name.split(".") if is_pkg else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            deps: Set[str] = set()
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = base[: len(base) - (node.level - 1)]
                    src = ".".join(anchor + ([node.module] if node.module else []))
                else:
                    src = node.module or ""
                subs = [f"{src}.{a.name}" for a in node.names]
                deps.update(subs)
                if not all(s in mods for s in subs):
                    deps.add(src)
            found += [(name, path, node.lineno, d) for d in sorted(deps)
                      if d in mods and d != name]
    return found


def import_graph() -> Dict[str, Set[str]]:
    """Module -> the mfdsl modules it imports, counting imports inside functions."""
    graph: Dict[str, Set[str]] = {name: set() for name in _modules()}
    for name, _, _, dep in imports():
        graph[name].add(dep)
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    out: List[List[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_counting_imports_inside_functions():
    found = cycles(import_graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_registry_imports_nothing_of_mfdsl_but_the_leaf_fields_module():
    graph = import_graph()
    assert graph["mfdsl.registry"] == {"mfdsl.fields"}
    assert graph["mfdsl.fields"] == set()


# --- the package floors -----------------------------------------------------------------
# The one order of mfdsl's packages and top-level modules, lowest first. A module imports
# only from its own package or from a floor below its own (never sideways, never up), so
# the packages form no loop. "__init__" is mfdsl/__init__.py (the public facade);
# "__main__" the entry modules (mfdsl/__main__.py, mfdsl/runner/__main__.py: what
# `python -m` and torchrun run), which nothing imports.
FLOORS = [
    ("errors", "fields", "runs", "resources", "paper_table"),  # import nothing of mfdsl
    ("fsio", "ir", "registry", "data"),
    ("ckptformats", "fingerprint", "layers"),
    ("checks", "model", "passes", "plugins", "schema"),
    ("frontend", "lower", "run_options"),
    ("analysis", "emit"),
    ("size_limits", "summary", "draw"),
    ("pipeline",),
    ("space", "weights"),
    ("api",),
    ("__init__", "target", "compare", "timm", "downstream"),
    ("bench", "runner"),
    ("sweep",),
    ("cli",),
    ("__main__",),
]


def home(module: str) -> str:
    """The package or top-level module of mfdsl a module belongs to (its FLOORS name)."""
    if module.endswith("__main__"):
        return "__main__"
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def floor_of(name: str) -> int:
    return next(i for i, floor in enumerate(FLOORS) if name in floor)


def climbing(found) -> List[str]:
    """Each import (from ``imports()``) of a package on the same floor or above, named by
    file:line and both packages with their floors."""
    bad = []
    for module, path, line, dep in found:
        a, b = home(module), home(dep)
        if a != b and floor_of(b) >= floor_of(a):
            way = "sideways" if floor_of(b) == floor_of(a) else "upwards"
            bad.append(f"{path.relative_to(ROOT)}:{line}: {module} (package {a}, floor "
                       f"{floor_of(a)}) imports {dep} (package {b}, floor {floor_of(b)}), "
                       f"{way}")
    return bad


def test_every_package_has_one_floor():
    named = [n for floor in FLOORS for n in floor]
    assert len(named) == len(set(named)), "named twice in FLOORS"
    homes = {home(m) for m in _modules()}
    assert homes == set(named), (f"missing from FLOORS: {sorted(homes - set(named))}; "
                                 f"in FLOORS but not in mfdsl: {sorted(set(named) - homes)}")


def test_no_import_climbs_above_its_floor():
    bad = climbing(imports())
    assert not bad, ("imports above the importer's floor (tests/test_architecture.FLOORS); "
                     "move the fact down to the lowest package that needs it:\n"
                     + "\n".join(bad))


def test_the_floor_check_names_a_climbing_import():
    path = PKG / "data" / "dataset.py"
    found = [("mfdsl.data.dataset", path, 26, "mfdsl.runner.errors"),
             ("mfdsl.data.dataset", path, 27, "mfdsl.errors"),
             ("mfdsl.cli.app", PKG / "cli" / "app.py", 3, "mfdsl.runner.train")]
    assert climbing(found) == [
        "mfdsl/data/dataset.py:26: mfdsl.data.dataset (package data, floor 1) imports "
        "mfdsl.runner.errors (package runner, floor 11), upwards"]


def package_graph() -> Dict[str, Set[str]]:
    """Package (or top-level module) -> the others its modules import."""
    graph: Dict[str, Set[str]] = {home(m): set() for m in _modules()}
    for module, _, _, dep in imports():
        if home(dep) != home(module):
            graph[home(module)].add(home(dep))
    return graph


def test_no_package_level_import_cycles():
    found = cycles(package_graph())
    assert not found, "package circles: " + "; ".join(" <-> ".join(c) for c in found)


# Modules inside a package and what they must not import, finer than the floors: the
# training step and the device plan stay free of the CLI, the passes and the data.
NOT_BELOW = {
    "mfdsl.runner.step": ("mfdsl.cli", "mfdsl.passes", "mfdsl.target", "mfdsl.data",
                          "mfdsl.bench"),
    "mfdsl.runner.device_plan": ("mfdsl.cli", "mfdsl.passes", "mfdsl.target", "mfdsl.bench"),
}


@pytest.mark.parametrize("low", sorted(NOT_BELOW))
def test_imports_run_downwards(low):
    graph = import_graph()
    assert any(m == low or m.startswith(low + ".") for m in graph), low
    bad = sorted(f"{m} imports {d}" for m, deps in graph.items()
                 if m == low or m.startswith(low + ".")
                 for d in deps for high in NOT_BELOW[low]
                 if d == high or d.startswith(high + "."))
    assert not bad, bad


# Low packages and the only mfdsl modules they may import (besides their own modules): the
# checkpoint formats sit below the runner, the weights resolvers, eval and the CLI that all
# read files through them; weights/ could not hold them, it imports the pipeline.
ONLY_IMPORTS = {
    "mfdsl.ckptformats": ("mfdsl.errors", "mfdsl.fsio", "mfdsl.runs"),
}


@pytest.mark.parametrize("low", sorted(ONLY_IMPORTS))
def test_low_packages_import_only_what_lies_below(low):
    graph = import_graph()
    inside = [m for m in graph if m == low or m.startswith(low + ".")]
    assert inside, low
    bad = sorted(f"{m} imports {d}" for m in inside for d in graph[m]
                 if not (d == low or d.startswith(low + ".") or d in ONLY_IMPORTS[low]))
    assert not bad, bad


# --- the registry -----------------------------------------------------------------------

def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


def test_registering_a_builtin_name_first_does_not_corrupt_the_registry():
    """The quoted bug: a user mixer named like a built-in, registered before any lookup,
    left the registry with three mixers and no norms. Now it is refused where it is
    registered, and the built-ins are all there."""
    r = _run("""
        from mfdsl.registry import register_mixer, registry, RegistryError
        try:
            @register_mixer("pooling")
            def mine(ctx):
                return None
        except RegistryError as e:
            print("refused:", e)
        from mfdsl.api import check_spec
        print(len(registry.names("mixer")), len(registry.names("norm")))
        print(registry.get("mixer", "pooling").factory.__module__)
    """)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("refused:") and "built in" in lines[0]
    mixers, norms = map(int, lines[1].split())
    assert mixers >= 7 and norms >= 4
    assert lines[2] == "mfdsl.layers.mixers"


def test_conflicts_do_not_depend_on_registration_order():
    from mfdsl.registry import Registry, RegistryError

    def builtin(ctx):
        return None

    builtin.__module__ = "mfdsl.layers.fake"

    def user(ctx):
        return None

    # user first, then the built-in: the lookup reports the clash, other kinds untouched
    reg = Registry()
    reg.register("mixer", "pooling")(user)
    reg.register("mixer", "pooling")(builtin)
    reg.register("norm", "layernorm")(builtin)
    with pytest.raises(RegistryError, match="registered twice"):
        reg.get("mixer", "pooling")
    assert reg.get("norm", "layernorm").factory is builtin
    # built-in first, then the user's: refused at registration
    reg2 = Registry()
    reg2.register("mixer", "pooling")(builtin)
    with pytest.raises(RegistryError, match="already registered"):
        reg2.register("mixer", "pooling")(user)
    # replace=True overrides in either order
    for first, second in ((user, builtin), (builtin, user)):
        reg3 = Registry()
        for f in (first, second):
            reg3.register("mixer", "pooling", replace=f is user)(f)
        assert reg3.get("mixer", "pooling").factory is user
        reg3.unregister("mixer", "pooling")
        assert reg3.get("mixer", "pooling").factory is builtin


def test_a_registry_clash_in_a_spec_is_a_located_error(tmp_path):
    from mfdsl.api import check_spec
    from mfdsl.errors import SpecError
    from mfdsl.registry import registry

    def user(ctx):
        return None

    registry._user["mixer"]["pooling"] = registry._builtin["mixer"]["pooling"].__class__(
        "mixer", "pooling", user)
    try:
        p = tmp_path / "t.mf"
        p.write_text("model t {\n  input 3x32x32\n  stage pooling x1 @8\n}\n")
        with pytest.raises(SpecError) as e:
            check_spec(p)
        assert e.value.line == 3 and "registered twice" in e.value.message
    finally:
        registry.unregister("mixer", "pooling")


def test_plugins_are_loaded_explicitly_not_by_the_registry():
    src = (PKG / "registry.py").read_text(encoding="utf-8")
    assert "entry_points" not in src and "import_module" not in src
    r = _run("""
        import mfdsl.plugins as p
        import mfdsl.api
        assert not p._done
        mfdsl.api.check_spec("specs/demo_tiny.mf")
        assert p._done
        print("ok")
    """)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


# --- one vocabulary -------------------------------------------------------------------

def test_docs_tables_are_generated_from_the_ir():
    from mfdsl.emit.docs import main

    assert main(["--check"]) == 0, "run: python -m mfdsl.emit.docs --write"


def _numeric_settings():
    from mfdsl.ir import (COUNT, FLOAT, INT, DownsampleSpec, EvalSpec, LimitsSpec,
                          RecipeSpec, StageSpec, settings_of)

    for cls in (RecipeSpec, EvalSpec, LimitsSpec, StageSpec, DownsampleSpec):
        for name, meta, default in settings_of(cls):
            if meta.type in (INT, FLOAT, COUNT) and (meta.min is not None or meta.max is not None):
                yield cls, name, meta, default


@pytest.mark.parametrize("cls,name,meta,default", list(_numeric_settings()),
                         ids=lambda v: getattr(v, "__name__", None) if isinstance(v, type)
                         else (v if isinstance(v, str) else None))
def test_schema_and_checks_agree_on_every_range(cls, name, meta, default):
    """Values just inside and just outside each declared range: the YAML schema and the
    semantic checks accept and refuse exactly the same ones."""
    from jsonschema import Draft202012Validator

    from mfdsl.checks import check_setting
    from mfdsl.errors import SpecError
    from mfdsl.ir import INT, COUNT
    from mfdsl.schema import build_schema, value_schema

    validator = Draft202012Validator({"$defs": build_schema()["$defs"], **value_schema(meta)})
    integral = meta.type in (INT, COUNT)
    step = 1 if integral else 1e-3
    probes = []
    for bound, excl, sign in ((meta.min, meta.min_exclusive, -1), (meta.max, meta.max_exclusive, 1)):
        if bound is None:
            continue
        b = int(bound) if integral else float(bound)
        probes += [(b, not excl), (b + sign * step, False), (b - sign * step, True)]
    node = cls()
    for v, inside in probes:
        schema_ok = validator.is_valid(v)
        try:
            check_setting(node, name, meta, v, name)
            check_ok = True
        except SpecError:
            check_ok = False
        assert schema_ok == check_ok == inside, (name, v, schema_ok, check_ok, inside)


def test_test_files_mirror_the_packages():
    """tests/test_<home>[_<what>].py: <home> is a package or top-level module of mfdsl, so
    a change to one finds its tests by name."""
    pkg = Path(__file__).resolve().parents[1] / "mfdsl"
    homes = {p.stem for p in pkg.glob("*.py")}
    homes |= {p.name for p in pkg.iterdir() if (p / "__init__.py").is_file()}
    homes |= {"architecture", "packaging", "zoo"}  # the import graph, the wheel, specs/
    tests = sorted(Path(__file__).parent.glob("test_*.py"))
    astray = [t.name for t in tests
              if not any(t.stem[5:] == h or t.stem[5:].startswith(h + "_") for h in homes)]
    assert len(tests) > 40 and not astray, astray


# The runner's classes stay small: one concern each (the issue "the runner's central hall":
# a Trainer of 27 methods and 56 attributes held every concern of a run).
MAX_METHODS, MAX_ATTRIBUTES = 12, 20


def _class_sizes(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        methods = [n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                   and not (n.name.startswith("__") and n.name.endswith("__"))
                   and not any(isinstance(d, ast.Name) and d.id == "property"
                               for d in n.decorator_list)]
        attrs = {n.target.id for n in node.body
                 if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
        for n in ast.walk(node):
            if (isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)
                    and isinstance(n.value, ast.Name) and n.value.id == "self"):
                attrs.add(n.attr)
        yield node.name, node.lineno, len(methods), len(attrs)


def test_no_runner_class_holds_too_much():
    big = [f"{path.relative_to(ROOT)}:{line}: {name} has {m} methods and {a} attributes"
           for path in sorted((ROOT / "mfdsl" / "runner").glob("*.py"))
           for name, line, m, a in _class_sizes(path)
           if m > MAX_METHODS or a > MAX_ATTRIBUTES]
    assert not big, ("split these classes by concern (at most "
                     f"{MAX_METHODS} methods, {MAX_ATTRIBUTES} attributes):\n" + "\n".join(big))


def test_the_class_size_check_sees_a_big_class(tmp_path):
    body = "".join(f"    def m{i}(self):\n        self.a{i} = {i}\n" for i in range(13))
    (tmp_path / "big.py").write_text("class Big:\n" + body)
    [(name, _, methods, attrs)] = list(_class_sizes(tmp_path / "big.py"))
    assert (name, methods, attrs) == ("Big", 13, 13)


# A tolerance in a test is derived (tests/tolerances.py: dtype and reduction size), or says
# on its line or just above why another one is right ("# tolerance: ..."), so that no
# comparison holds only on the CPU it was written on.
_PICKED = re.compile(r"\b(atol|rtol|rel|abs)\s*=\s*[0-9.]+(e-?[0-9]+)?\b")


def picked_tolerances(text: str) -> List[int]:
    """Line numbers of hand-picked tolerances without a ``# tolerance:`` reason near."""
    lines = text.splitlines()
    return [i + 1 for i, line in enumerate(lines) if _PICKED.search(line.split("#")[0])
            and not any("# tolerance:" in lines[j] for j in range(max(0, i - 3), i + 1))]


def test_every_picked_tolerance_says_why():
    bad = [f"tests/{p.name}:{n}" for p in sorted((ROOT / "tests").glob("test_*.py"))
           for n in picked_tolerances(p.read_text(encoding="utf-8"))]
    assert not bad, ("use tests/tolerances.py (derived from dtype and reduction size), or "
                     "say why on the line above ('# tolerance: ...'):\n" + "\n".join(bad))


def test_the_tolerance_check_finds_an_unexplained_one():
    # tolerance: (the texts below are the check's input, not comparisons)
    assert picked_tolerances("x = 1\nassert_close(a, b, atol=1e-5, rtol=1e-5)\n") == [2]
    assert picked_tolerances("# tolerance: elementwise\nassert_close(a, b, atol=1e-6)\n") == []


# Readers of checkpoint files: one package owns them, so each refuses what is not a regular
# file (a FIFO would block) and loads tensors only (weights_only / safetensors).
_CHECKPOINT_READS = re.compile(r"\b(safe_open|load_file|torch\.load)\(")


def checkpoint_readers_outside(package: Path) -> List[str]:
    """``file:line`` of each checkpoint read in ``package`` outside its ckptformats/."""
    found = []
    for path in sorted(package.rglob("*.py")):
        if "ckptformats" in path.relative_to(package).parts:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if _CHECKPOINT_READS.search(code) and "``" not in code:
                found.append(f"{path.relative_to(package.parent)}:{n}")
    return found


def test_checkpoint_files_are_read_in_ckptformats_only():
    assert checkpoint_readers_outside(PKG) == []


def test_the_checkpoint_reader_check_sees_a_stray_read(tmp_path):
    pkg = tmp_path / "mfdsl"
    (pkg / "runner").mkdir(parents=True)
    (pkg / "ckptformats").mkdir()
    (pkg / "ckptformats" / "ok.py").write_text("state = torch.load(p, weights_only=True)\n")
    (pkg / "runner" / "parts.py").write_text(
        "x = 1\nwith safe_open(path, framework='pt') as f:\n    pass\n")
    assert checkpoint_readers_outside(pkg) == ["mfdsl/runner/parts.py:2"]
