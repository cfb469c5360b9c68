"""The static check of an edited region, before any of its code runs.

It refuses what a training strategy never needs and what would let it read the answer or reach the
machine: imports outside a short list (torch, math, numpy, ...), file, network and process access,
dynamic code (``eval``, ``exec``, ``getattr`` on names), dunder attributes, ``global`` statements, and
any name or string that points at ground truth, the trainer, the datamodule or evaluation code. It
also keeps the region's interface: every function the original region defines must still be defined
with the same arguments, and no name defined outside the region may be rebound.

This catches mistakes and obvious misuse by the model; it is not a sandbox (see the README's security
note). The blindness run of :mod:`hydra_llm.code_edits.check_run` catches leaks it cannot see.
"""

from __future__ import annotations

import ast
import re

ALLOWED_IMPORTS = (
    "__future__",
    "math",
    "typing",
    "collections.abc",
    "dataclasses",
    "functools",
    "itertools",
    "numpy",
    "torch",
    "torch.nn",
    "torch.nn.functional",
)
FORBIDDEN_CALLS = frozenset(
    {
        "open",
        "exec",
        "eval",
        "compile",
        "__import__",
        "globals",
        "locals",
        "vars",
        "getattr",
        "setattr",
        "delattr",
        "input",
        "breakpoint",
        "exit",
        "quit",
        "help",
        "memoryview",
    }
)
# Attributes that read or write files, reach the network or load native code (torch.load, np.save, ...).
FORBIDDEN_ATTRIBUTES = frozenset(
    {
        "load",
        "save",
        "hub",
        "from_file",
        "fromfile",
        "tofile",
        "loadtxt",
        "savetxt",
        "genfromtxt",
        "memmap",
        "ctypeslib",
        "cpp_extension",
        "library",
        "ops",
        "jit",
        "compile",
        "system",
        "popen",
        "_trainer",
    }
)
# Words that point at the answer or at the code that holds it, in names, attributes and strings.
FORBIDDEN_WORDS = re.compile(
    r"(?i)(ground_?truth|true_params|trainer|datamodule|evaluation|hydra_llm|simulation|oracle)"
)
MAX_BODY_CHARS = 8000
MAX_BODY_LINES = 200


def check_region(body: str, original: str, outside_names: set[str], name: str) -> list[str]:
    """Problems of the new ``body`` of region ``name`` (empty list when it passes)."""
    if len(body) > MAX_BODY_CHARS or body.count("\n") > MAX_BODY_LINES:
        return [
            f"region {name}: {len(body)} characters / {body.count(chr(10)) + 1} lines; allowed: at most "
            f"{MAX_BODY_CHARS} characters and {MAX_BODY_LINES} lines"
        ]
    try:
        tree = ast.parse(body)
    except SyntaxError as err:
        return [f"region {name}: syntax error at line {err.lineno}: {err.msg}"]
    problems = [f"region {name}: {p}" for p in _forbidden(tree)]
    problems += [f"region {name}: {p}" for p in _interface(tree, ast.parse(original), outside_names)]
    return problems


def top_level_names(tree: ast.Module) -> set[str]:
    """Names a module body binds at its top level (functions, classes, assignments, imports)."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, ast.Import | ast.ImportFrom) and getattr(node, "module", "") != "__future__":
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def _allowed_import(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in ALLOWED_IMPORTS if m != "__future__") or (
        module == "__future__"
    )


def _forbidden(tree: ast.Module) -> list[str]:
    problems: list[str] = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", "?")
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or "."]
            for module in modules:
                if node.__class__ is ast.ImportFrom and getattr(node, "level", 0):
                    problems.append(f"line {line}: relative import; allowed: {', '.join(ALLOWED_IMPORTS)}")
                elif not _allowed_import(module):
                    problems.append(
                        f"line {line}: import of {module!r}; allowed: {', '.join(ALLOWED_IMPORTS)}"
                    )
        elif isinstance(node, ast.Global | ast.Nonlocal):
            problems.append(f"line {line}: global/nonlocal statements are not allowed")
        elif (
            isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FORBIDDEN_CALLS
        ):
            problems.append(f"line {line}: call of {node.func.id}() is not allowed")
        elif isinstance(node, ast.Name) and node.id in FORBIDDEN_CALLS:
            problems.append(f"line {line}: {node.id} is not allowed")
        elif isinstance(node, ast.Attribute) and (
            node.attr.startswith("__") or node.attr in FORBIDDEN_ATTRIBUTES
        ):
            problems.append(f"line {line}: attribute .{node.attr} is not allowed")
        if isinstance(node, ast.Name | ast.Attribute | ast.arg | ast.Constant):
            word = (
                node.id
                if isinstance(node, ast.Name)
                else node.attr
                if isinstance(node, ast.Attribute)
                else node.arg
                if isinstance(node, ast.arg)
                else node.value
                if isinstance(node.value, str)
                else ""
            )
            hit = FORBIDDEN_WORDS.search(word)
            if hit:
                problems.append(
                    f"line {line}: {hit.group(0)!r} points at ground truth or at code that holds it "
                    "(trainer, datamodule, evaluation, simulation); training code may read only the model "
                    "and its batch"
                )
    return list(dict.fromkeys(problems))


def _signature(node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    args = node.args
    return [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]


def _interface(tree: ast.Module, original: ast.Module, outside_names: set[str]) -> list[str]:
    problems = []
    new_defs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    for old in original.body:
        if not isinstance(old, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        new = new_defs.get(old.name)
        if new is None:
            problems.append(
                f"must still define {old.name}({', '.join(_signature(old))}): the code outside the region "
                "calls it"
            )
        elif _signature(new) != _signature(old):
            problems.append(
                f"{old.name} must keep its arguments ({', '.join(_signature(old))}); "
                f"got ({', '.join(_signature(new))})"
            )
    clashes = sorted(top_level_names(tree) & outside_names)
    if clashes:
        problems.append(
            f"rebinds {', '.join(clashes)}, defined outside the region (an edit may not reach outside it)"
        )
    return problems
