"""Static checks on model-written text, run in the trainer and again in each sandbox child: the
program allow-list (``check_program``) and the size- and depth-guarded literal readers for inputs
and outputs. The rules and why they are safe are in executor.py's docstring.

Standard library only: the sandbox server imports this module under ``python -S -s``.
"""

from __future__ import annotations

import ast

# module → names a program may use from it (None: every public non-module name).
SAFE_MODULE_NAMES: dict[str, tuple[str, ...] | None] = {
    "math": None,
    "itertools": None,
    "heapq": None,
    "bisect": None,
    "functools": ("reduce", "partial", "lru_cache", "cache", "cmp_to_key"),
    "collections": ("Counter", "defaultdict", "deque", "OrderedDict"),
    # string: constants only (string.Formatter().get_field returns real attribute objects)
    "string": ("ascii_letters", "ascii_lowercase", "ascii_uppercase", "digits", "hexdigits",
               "octdigits", "punctuation", "printable", "whitespace"),
    "re": ("compile", "match", "fullmatch", "search", "sub", "subn", "split", "findall", "finditer",
           "escape", "error", "IGNORECASE", "I", "MULTILINE", "M", "DOTALL", "S", "VERBOSE", "X",
           "ASCII", "A"),
}
SAFE_MODULES = tuple(SAFE_MODULE_NAMES)

SAFE_BUILTINS = (
    "abs", "all", "any", "ascii", "bin", "bool", "bytearray", "bytes", "callable", "chr", "complex",
    "dict", "divmod", "enumerate", "filter", "float", "format", "frozenset", "hex", "int",
    "isinstance", "issubclass", "iter", "len", "list", "map", "max", "min", "next", "oct", "ord",
    "pow", "print", "range", "repr", "reversed", "round", "set", "slice", "sorted", "str", "sum",
    "tuple", "zip",
    "ArithmeticError", "AssertionError", "Exception", "IndexError", "KeyError", "LookupError",
    "NotImplementedError", "OverflowError", "RecursionError", "RuntimeError", "StopIteration",
    "TypeError", "ValueError", "ZeroDivisionError",
)

FORBIDDEN_NAMES = frozenset({
    "open", "eval", "exec", "compile", "globals", "locals", "vars", "getattr", "setattr", "delattr",
    "hasattr", "input", "breakpoint", "help", "exit", "quit", "memoryview", "type", "object", "super",
    "dir", "id", "hash", "classmethod", "staticmethod", "property", "copyright", "credits",
    "license", "BaseException", "SystemExit", "KeyboardInterrupt", "GeneratorExit",
})
# Attributes of frames, code objects, tracebacks and generators lead back to real globals.
_FORBIDDEN_ATTR_PREFIXES = ("_", "gi_", "cr_", "ag_", "f_", "tb_", "co_")
_FORBIDDEN_NODES = {
    ast.Global: "global", ast.Nonlocal: "nonlocal", ast.ClassDef: "class definition",
    ast.AsyncFunctionDef: "async def", ast.Await: "await", ast.AsyncFor: "async for",
    ast.AsyncWith: "async with",
}

MAX_CODE_CHARS = 20_000     # before ast.parse in the trainer; AZR programs are a few hundred chars
MAX_NODES = 5_000
MAX_INPUT_CHARS = 10_000
MAX_LITERAL_CHARS = 20_000  # outputs_equal: longer strings are compared as text only
MAX_LITERAL_DEPTH = 100


def _module_allowed_names(name: str) -> tuple[str, ...]:
    listed = SAFE_MODULE_NAMES[name]
    if listed is not None:
        return listed
    mod = __import__(name)
    return tuple(sorted(k for k, v in vars(mod).items()
                        if not k.startswith("_") and type(v).__name__ != "module"))


_ALLOWED_FROM: dict[str, frozenset[str]] = {}


def _allowed_from(module: str) -> frozenset[str]:
    if module not in _ALLOWED_FROM:
        _ALLOWED_FROM[module] = frozenset(_module_allowed_names(module))
    return _ALLOWED_FROM[module]


def _check_import(node: ast.AST) -> str | None:
    if isinstance(node, ast.Import):
        for a in node.names:
            if a.name not in SAFE_MODULE_NAMES:
                return f"import of '{a.name}' is not allowed"
            if a.asname and a.asname.startswith("__"):
                return f"forbidden name '{a.asname}'"
        return None
    assert isinstance(node, ast.ImportFrom)
    if node.level or node.module not in SAFE_MODULE_NAMES:
        return f"import from '{node.module or '.'}' is not allowed"
    allowed = _allowed_from(node.module)
    for a in node.names:
        if a.name == "*":
            return "star import is not allowed"
        if a.name not in allowed:
            return f"import of '{node.module}.{a.name}' is not allowed"
        if a.asname and a.asname.startswith("__"):
            return f"forbidden name '{a.asname}'"
    return None


# str.format/format_map look fields up by name: '{0.__class__}' is getattr, '{0[k]}' __getitem__.
_FORMAT_METHODS = ("format", "format_map")


def _check_format_template(template: str, depth: int = 0) -> str | None:
    """A format string may name fields (``{0}``, ``{name}``, ``{!r}``, ``{:>{w}}``) but never reach
    into them: no ``.`` or ``[`` in a field name, in the string or in a nested spec."""
    import _string
    if depth > 1:  # str.format itself allows one nested level
        return "format string too deeply nested"
    try:
        parts = list(_string.formatter_parser(template))
    except ValueError:
        return "malformed format string"
    for _, field, spec, _ in parts:
        if field is None:
            continue
        if "." in field or "[" in field:
            return "format field with '.' or '[' is not allowed"
        if spec and "{" in spec:
            reason = _check_format_template(spec, depth + 1)
            if reason:
                return reason
    return None


def _check_attribute(node: ast.Attribute, modules: dict[str, str]) -> str | None:
    if node.attr.startswith(_FORBIDDEN_ATTR_PREFIXES):
        return f"forbidden attribute '{node.attr}'"
    if node.attr in _FORMAT_METHODS:
        if not (isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            return f"'.{node.attr}' is allowed on a string literal only"
        return _check_format_template(node.value.value)
    if isinstance(node.value, ast.Name) and node.value.id in modules:
        module = modules[node.value.id]
        if node.attr not in _allowed_from(module):  # e.g. string.Formatter, re.enum
            return f"'{module}.{node.attr}' is not allowed"
    return None


def check_program(code: str) -> str | None:  # noqa: C901 - the allow-list: one branch per kind of syntax node, kept together to be audited
    """The AST allow-list: None when ``code`` may run, else a short reason."""
    if not isinstance(code, str):
        return "program is not a string"
    if len(code) > MAX_CODE_CHARS:
        return "program too long"
    try:
        tree = ast.parse(code, mode="exec")
    except (SyntaxError, ValueError):
        return "syntax error"
    except (MemoryError, RecursionError):  # parser limits on absurd nesting
        return "program too deeply nested"
    body = tree.body
    if not body or not isinstance(body[-1], ast.FunctionDef) or body[-1].name != "f":
        return "program must be one top-level 'def f(...)'"
    for node in body[:-1]:
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            return "only imports may precede 'def f'"
    modules = {}  # name bound by `import m [as name]` → m
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update((a.asname or a.name, a.name) for a in node.names if a.name in SAFE_MODULE_NAMES)
    n = 0
    for node in ast.walk(tree):  # iterative: no recursion on deep trees
        n += 1
        if n > MAX_NODES:
            return "program too long"
        bad = _FORBIDDEN_NODES.get(type(node))
        if bad:
            return f"{bad} is not allowed"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            reason = _check_import(node)
            if reason:
                return reason
        elif isinstance(node, ast.Name):
            if node.id in FORBIDDEN_NAMES or node.id.startswith("__"):
                return f"forbidden name '{node.id}'"
        elif isinstance(node, ast.Attribute):
            reason = _check_attribute(node, modules)
            if reason:
                return reason
        elif isinstance(node, ast.MatchClass):  # `case int(__class__=t)` reads an attribute
            for attr in node.kwd_attrs:
                if attr.startswith(_FORBIDDEN_ATTR_PREFIXES):
                    return f"forbidden attribute '{attr}'"
                if attr in _FORMAT_METHODS:  # `case str(format=fm)` binds any string's format
                    return f"'.{attr}' is allowed on a string literal only"
        elif isinstance(node, (ast.FunctionDef, ast.Lambda)):
            a = node.args
            for arg in a.posonlyargs + a.args + a.kwonlyargs + [a.vararg, a.kwarg]:
                if arg is not None and arg.arg.startswith("__"):
                    return f"forbidden name '{arg.arg}'"
            if isinstance(node, ast.FunctionDef) and node.name.startswith("__"):
                return f"forbidden name '{node.name}'"
        elif isinstance(node, ast.ExceptHandler):
            if node.name and node.name.startswith("__"):
                return f"forbidden name '{node.name}'"
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)):
            if node.name and node.name.startswith("__"):
                return f"forbidden name '{node.name}'"
    return None


def parse_args(input_text: str) -> tuple:
    """``"[1, 2], 3"`` → ``([1, 2], 3)``; ValueError unless it is a plain literal argument list."""
    if not isinstance(input_text, str) or len(input_text) > MAX_INPUT_CHARS:
        raise ValueError("input too long")
    if _nesting_depth(input_text) > MAX_LITERAL_DEPTH:
        raise ValueError("input too deeply nested")
    if not input_text.strip():
        return ()
    try:
        tree = ast.parse("_(" + input_text + "\n)", mode="eval")
        call = tree.body
        if (not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name) or call.func.id != "_"
                or call.keywords or any(isinstance(a, ast.Starred) for a in call.args)):
            raise ValueError
        return tuple(ast.literal_eval(a) for a in call.args)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        raise ValueError("input is not a literal argument list") from None


_FAIL = object()


def _nesting_depth(s: str) -> int:
    """Bracket depth outside string literals (approximate: enough to refuse pathological input)."""
    depth = best = 0
    quote = None
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c in "([{":
            depth += 1
            best = max(best, depth)
        elif c in ")]}":
            depth -= 1
        i += 1
    return best


def safe_literal(text: str):
    """``ast.literal_eval`` with size and nesting guards; returns ``_FAIL`` when it is no literal."""
    if not isinstance(text, str) or len(text) > MAX_LITERAL_CHARS or _nesting_depth(text) > MAX_LITERAL_DEPTH:
        return _FAIL
    try:
        return ast.literal_eval(text.strip())
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        return _FAIL


def outputs_equal(a: str | None, b: str | None) -> bool:
    """Two literal strings equal by value (Python ``==``: ``1 == 1.0 == True``, like the AZR
    reference); when either is not a literal, by stripped text."""
    if not isinstance(a, str) or not isinstance(b, str):
        return False
    a, b = a.strip(), b.strip()
    if a == b:
        return True
    va, vb = safe_literal(a), safe_literal(b)
    if va is _FAIL or vb is _FAIL:
        return False
    try:
        return bool(va == vb)
    except (RecursionError, MemoryError, TypeError, ValueError):
        return False
