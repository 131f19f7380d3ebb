"""The engine's contracts (shared/engine/protocols.py) hold for both trainers and for every
registered family's task, and no module outside a family's own files dispatches on a
family's name (shared/registry.py is the only place a family is looked up)."""
import ast
import inspect
from pathlib import Path

import pytest

import tests.fifth_family.spec  # noqa: F401  (registers the fifth family beside the built-in ones)
from mlx_models.trainer import Trainer as MLXTrainer
from shared.engine import protocols
from shared.registry import families
from torch_models.trainer import Trainer as TorchTrainer

ROOT = Path(__file__).resolve().parent.parent


def protocol_members(protocol) -> dict[str, inspect.Signature | None]:
    """Each member a protocol asks for: methods with their signatures, attributes as None."""
    members = {name: inspect.signature(value) for name, value in vars(protocol).items()
               if inspect.isfunction(value) and not name.startswith("_")}
    for name in inspect.get_annotations(protocol):
        members.setdefault(name, None)
    return members


def assert_implements(cls, protocol, instance_attributes=()) -> None:
    for name, wanted in protocol_members(protocol).items():
        if wanted is None:   # an attribute: on the class, or set by __init__
            assert hasattr(cls, name) or name in instance_attributes, f"{cls.__name__} lacks {name}"
            continue
        method = getattr(cls, name, None)
        assert callable(method), f"{cls.__qualname__} lacks the method {name}"
        have = list(inspect.signature(method).parameters.values())
        want = list(wanted.parameters.values())
        positional = lambda ps: [p.name for p in ps if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]  # noqa: E731
        assert positional(have) == positional(want), \
            f"{cls.__qualname__}.{name}{inspect.signature(method)} does not match the protocol's {wanted}"
        if any(p.kind == p.VAR_KEYWORD for p in want):
            assert any(p.kind == p.VAR_KEYWORD for p in have), f"{cls.__qualname__}.{name} needs **options"


def init_assignments(cls) -> set[str]:
    """Attributes the class's __init__ assigns on self."""
    tree = ast.parse(inspect.getsource(cls))
    return {t.attr for node in ast.walk(tree) if isinstance(node, (ast.Assign, ast.AnnAssign))
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
            for t in (t.elts if isinstance(t, ast.Tuple) else [t])
            if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"}


@pytest.mark.parametrize("trainer", [MLXTrainer, TorchTrainer], ids=["mlx", "torch"])
def test_both_trainers_implement_the_trainer_protocol(trainer):
    assert_implements(trainer, protocols.Trainer)
    # Built the way the loop builds it: Trainer(spec, train, weights)
    assert list(inspect.signature(trainer).parameters)[:3] == ["spec", "train", "weights"]


@pytest.mark.parametrize("name", sorted(families()))
def test_every_family_task_implements_the_task_protocol(name):
    task = families()[name].task
    assert_implements(task, protocols.Task, init_assignments(task))
    assert list(inspect.signature(task).parameters) == ["config", "out_dir", "rank", "world_size"]


def test_a_class_missing_a_method_fails_the_check():
    class Broken:
        units_per_sample = 1.0
        file_settings: dict = {}

        def train_batch(self, position, batch_size):
            pass

        def evaluate(self, trainer):
            pass

    with pytest.raises(AssertionError, match="checkpoint_files"):
        assert_implements(Broken, protocols.Task)


# ------------------------------------------------------------------ no name dispatch
def own_files(name: str) -> set[Path]:
    """A family's own files: where its name may appear as a key or in a comparison."""
    return {ROOT / "shared" / sub / f"{name}.py" for sub in ("families", "specs", "planner", "tasks")} | \
           {ROOT / f"{backend}_models" / f"{name}.py" for backend in ("mlx", "torch")}


def family_name_dispatch(path: Path, names: set[str]) -> list[str]:
    """Comparisons with a family's name (==, !=, in, not in a literal), dict literals keyed
    by one, and match cases on one."""
    tree = ast.parse(path.read_text(), str(path))
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    named = lambda node: isinstance(node, ast.Constant) and node.value in names  # noqa: E731
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for operand in operands:
                elements = operand.elts if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else [operand]
                hits += [f"{where}:{node.lineno} compares with {e.value!r}"
                         for e in elements if named(e)]
        elif isinstance(node, ast.Dict):
            hits += [f"{where}:{node.lineno} keys a dict by {k.value!r}"
                     for k in node.keys if k is not None and named(k)]
        elif isinstance(node, ast.MatchValue) and named(node.value):
            hits.append(f"{where}:{node.lineno} matches {node.value.value!r}")
    return hits


def test_no_module_dispatches_on_a_family_name():
    names = set(families())
    exempt = set().union(*(own_files(n) for n in names))
    files = [p for d in ("shared", "mlx_models", "torch_models", "bench") for p in (ROOT / d).rglob("*.py")]
    assert len(files) > 40
    hits = [h for p in files if p not in exempt for h in family_name_dispatch(p, names)]
    assert hits == [], "family names dispatched outside the registry:\n" + "\n".join(hits)


def test_the_dispatch_scan_finds_dispatch(tmp_path):
    sample = tmp_path / "dispatch_sample.py"
    sample.write_text('TABLE = {"lm": 1}\n'
                      'def f(config):\n'
                      '    if config.family == "echostream" or config.family in ("bandsplit", "x"):\n'
                      '        return 1\n')
    hits = family_name_dispatch(sample, {"lm", "echostream", "bandsplit"})
    assert len(hits) == 3, hits
