"""hf_freqkd.types is neutral ground: methods and models import it, it imports neither, and
hf_freqkd/methods and hf_freqkd/models never import each other in a cycle, lazy imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import hf_freqkd
from hf_freqkd.errors import ModelError
from hf_freqkd.types import BackboneInfo, FeatureRequest, LogitsAndFeatures

PACKAGE_ROOT = Path(hf_freqkd.__file__).parent


def imported_modules(path: Path, root: Path = PACKAGE_ROOT) -> set[str]:
    """Every hf_freqkd module ``path`` imports, anywhere in the file (function bodies and
    ``if TYPE_CHECKING:`` blocks included), as dotted names."""
    package = ".".join(["hf_freqkd", *path.relative_to(root).parent.parts])  # what `from .` means here
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("hf_freqkd"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("hf_freqkd"):
                found.add(target)
                # `from . import x` / `from .pkg import mod` may name submodules
                found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def subpackage(module: str) -> str:
    """``hf_freqkd.methods.fam`` -> ``hf_freqkd.methods``; top-level modules stay themselves."""
    return ".".join(module.split(".")[:2])


def package_graph() -> dict[str, set[str]]:
    """Which hf_freqkd subpackage / top-level module imports which, from every file's source."""
    graph: dict[str, set[str]] = {}
    known = {subpackage("hf_freqkd." + ".".join(p.relative_to(PACKAGE_ROOT).with_suffix("").parts)) for p in PACKAGE_ROOT.rglob("*.py")}
    for path in PACKAGE_ROOT.rglob("*.py"):
        if path == PACKAGE_ROOT / "__init__.py":
            continue  # the package's own __init__ imports everything on purpose
        source = subpackage("hf_freqkd." + ".".join(path.relative_to(PACKAGE_ROOT).with_suffix("").parts))
        targets = {subpackage(name) for name in imported_modules(path)} & known
        graph.setdefault(source, set()).update(targets - {source})
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, stack = set(), [start]
    while stack:
        for target in graph.get(stack.pop(), ()):
            if target not in seen:
                seen.add(target)
                stack.append(target)
    return seen


def test_the_import_scanner_sees_lazy_and_type_checking_imports(tmp_path):
    graph = package_graph()
    # methods/fam.py imports models.pairing; the scanner must see that edge or the test below proves nothing.
    assert "hf_freqkd.models" in graph["hf_freqkd.methods"]
    assert "hf_freqkd.types" in graph["hf_freqkd.methods"] and "hf_freqkd.types" in graph["hf_freqkd.models"]
    # A lazy import inside a function and one under TYPE_CHECKING, two levels up, count as imports.
    module = tmp_path / "hf_freqkd" / "models" / "lazy.py"
    module.parent.mkdir(parents=True)
    module.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..methods.base import DistillationMethod\n"
        "def f():\n    from ..methods import registry\n"
    )
    assert {"hf_freqkd.methods.base", "hf_freqkd.methods", "hf_freqkd.methods.registry"} <= imported_modules(module, tmp_path / "hf_freqkd")


def test_no_import_cycle_between_methods_and_models():
    graph = package_graph()
    methods_reach = reachable(graph, "hf_freqkd.methods")
    models_reach = reachable(graph, "hf_freqkd.models")
    assert not ("hf_freqkd.models" in methods_reach and "hf_freqkd.methods" in models_reach), (
        f"import cycle: methods -> {sorted(methods_reach)}; models -> {sorted(models_reach)}"
    )


def test_types_imports_neither_methods_nor_models():
    imports = imported_modules(PACKAGE_ROOT / "types.py")
    assert not any(name.startswith(("hf_freqkd.methods", "hf_freqkd.models")) for name in imports), imports
    assert "of" not in vars(BackboneInfo)  # building one needs models code: hf_freqkd.models.features.backbone_info


def test_shared_types_hold_what_methods_read():
    output = LogitsAndFeatures(torch.zeros(2, 3))
    assert output.features == {} and LogitsAndFeatures(torch.zeros(1, 3)).features is not output.features
    assert FeatureRequest() == FeatureRequest((), ())


def test_token_features_become_maps_and_a_wrong_grid_is_named():
    vit = BackboneInfo(("blocks.0",), num_prefix_tokens=1, patch_size=(4, 4), layout="tokens")
    tokens = torch.arange(2 * 17 * 5, dtype=torch.float32).reshape(2, 17, 5)  # class token + 4 x 4 patches, 5 wide
    feature_map = vit.to_map(tokens, (16, 16))
    assert feature_map.shape == (2, 5, 4, 4)
    assert torch.equal(feature_map[:, :, 0, 1], tokens[:, 2, :])  # patch (0, 1) is token 1 + 1 prefix
    assert torch.equal(BackboneInfo(("x",), layout="channels_last").to_map(torch.zeros(2, 4, 4, 5), (16, 16)), torch.zeros(2, 5, 4, 4))
    with pytest.raises(ModelError, match=r"cannot lay 16 patch tokens on a 8x8 grid"):
        vit.to_map(tokens, (32, 32))
