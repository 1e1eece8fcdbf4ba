"""Keeps core/meshlet/ inside the Python subset MicroPython runs (STYLE §3.7).

An AST lint, so it needs no device and no MicroPython: every rule below is a
construct that either does not exist on MicroPython or behaves differently
there (STYLE §3.1-§3.4), each checked against the unix port in .venv. mpy-cross
(test_mpy_cross.py) catches what the *parser* rejects; this file catches what
parses but then fails or misbehaves at run time.

The CPython-only crypto backends are exempt: they are never frozen, and their
whole point is to import PyNaCl, `cryptography`, `hashlib.blake2s` and `hmac`.
In exchange, nothing else may import them, except the facade, which may import
`_cpython` only inside `try: ... except ImportError:` so that MicroPython falls
through to `_pure`.

All findings are reported at once, one line each: `path:line: rule: detail`.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "core" / "meshlet"

# Relative to CORE. Exempt from the subset lint; nobody else may import them.
CPYTHON_BACKENDS = frozenset({"crypto/_sodium.py", "crypto/_pyca.py", "crypto/_cpython.py"})
BACKEND_MODULES = frozenset({"meshlet.crypto._sodium", "meshlet.crypto._pyca", "meshlet.crypto._cpython"})
FACADE = "crypto/__init__.py"
FACADE_MAY_TRY = "meshlet.crypto._cpython"

# STYLE §3.4: the only standard modules the core may import.
ALLOWED_IMPORTS = frozenset({"struct", "binascii", "json", "hashlib", "collections", "errno", "micropython"})
# Never executed on either runtime (TYPE_CHECKING is False), so only mypy sees them.
TYPE_CHECKING_ONLY = frozenset({"typing", "typing_extensions", "collections.abc"})
# Named, so the report says *why* rather than just "not allowed".
FORBIDDEN_IMPORTS = {
    "socket": "I/O belongs in the shells",
    "select": "I/O belongs in the shells",
    "time": "time is an input (now_ms), STYLE §5.2",
    "os": "randomness is an input (random_bytes), STYLE §5.2; no files in the core",
    "random": "randomness is an input (random_bytes), STYLE §5.2",
    "secrets": "absent on MicroPython; randomness is an input",
    "threading": "the core is synchronous and single-threaded",
    "_thread": "the core is synchronous and single-threaded",
    "asyncio": "asyncio is for the shells, not the core (STYLE §3.4)",
    "logging": "the core takes a log callable (STYLE §5.8)",
    "ipaddress": "absent on MicroPython; addresses are bytes + int (STYLE §3.4)",
    "dataclasses": "absent on MicroPython; write a small class",
    "enum": "absent on MicroPython; use const() ints",
    "typing": "absent on MicroPython; import it under `if TYPE_CHECKING:`",
    "__future__": "absent on MicroPython",
    "abc": "absent on most boards",
    "hmac": "absent on most boards; use meshlet.crypto.hmac_blake2s",
}

# Attribute calls that do not exist on MicroPython (checked on the unix port).
MISSING_METHODS = {
    "removeprefix": "str.removeprefix is absent",
    "removesuffix": "str.removesuffix is absent",
    "bit_length": "int.bit_length is absent",
    "hexdigest": "hashlib objects have no hexdigest(); use digest().hex()",
}
# Builtin methods and constructors that refuse keyword arguments on MicroPython
# (each one checked on the unix port: "function doesn't take keyword arguments").
KW_REFUSING_METHODS = frozenset(
    {
        "decode", "encode", "split", "rsplit", "replace", "hex",
        "from_bytes", "to_bytes", "pack_into", "unpack_from",
    }
)  # fmt: skip
KW_REFUSING_CALLS = frozenset({"bytes", "bytearray", "str", "int", "sum", "round", "deque"})
# Names undefined in MicroPython's builtins (no ConnectionError family, STYLE §3.2).
MISSING_BUILTINS = frozenset(
    {
        "ModuleNotFoundError", "ConnectionError", "BrokenPipeError", "ConnectionResetError", "TimeoutError",
        "FileNotFoundError", "PermissionError", "InterruptedError", "BlockingIOError", "RecursionError",
        "UnicodeDecodeError", "BufferError", "ReferenceError", "vars", "format", "ascii", "breakpoint",
        "aiter", "anext",
    }
)  # fmt: skip


def core_files() -> "list[Path]":
    return sorted(CORE.rglob("*.py"))


def rel(path: Path) -> str:
    return path.relative_to(CORE).as_posix()


def module_name(relpath: str) -> "tuple[str, str]":
    """('meshlet.crypto._pure', 'meshlet.crypto') for 'crypto/_pure.py'."""
    parts = ["meshlet"] + relpath[:-3].split("/")
    if parts[-1] == "__init__":
        parts.pop()
        return ".".join(parts), ".".join(parts)
    return ".".join(parts), ".".join(parts[:-1])


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _catches_import_error(node: ast.Try) -> bool:
    for h in node.handlers:
        types = h.type.elts if isinstance(h.type, ast.Tuple) else [h.type]
        if any(isinstance(t, ast.Name) and t.id == "ImportError" for t in types):
            return True
    return False


def _bound_names(tree: ast.AST) -> "set[str]":
    """Every name the module binds anywhere, so a local `format` is not flagged."""
    out: "set[str]" = set()
    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(n.name)
        elif isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load):
            out.add(n.id)
        elif isinstance(n, ast.arg):
            out.add(n.arg)
        elif isinstance(n, ast.alias):
            out.add((n.asname or n.name).split(".")[0])
    return out


class _Lint(ast.NodeVisitor):
    """Collects (line, rule, detail) for one module.

    `imports` gets (line, module, in_try_import_error) for every module an
    import statement may load, for the backend-isolation check.
    """

    def __init__(self, module: str, package: str, bound: "set[str]") -> None:
        self.module = module
        self.package = package
        self.bound = bound
        self.found: "list[tuple[int, str, str]]" = []
        self.imports: "list[tuple[int, str, bool]]" = []
        self.in_type_checking = False
        self.in_try_import = False

    def add(self, node: ast.AST, rule: str, detail: str) -> None:
        self.found.append((getattr(node, "lineno", 0), rule, detail))

    # -- context ---------------------------------------------------------

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        self.visit(node.test)
        saved, self.in_type_checking = self.in_type_checking, True
        for stmt in node.body:
            self.visit(stmt)
        self.in_type_checking = saved
        for stmt in node.orelse:
            self.visit(stmt)

    def visit_Try(self, node: ast.Try) -> None:
        saved = self.in_try_import
        self.in_try_import = saved or _catches_import_error(node)
        for stmt in node.body:
            self.visit(stmt)
        self.in_try_import = saved
        for part in (node.handlers, node.orelse, node.finalbody):
            for stmt in part:
                self.visit(stmt)

    # -- imports ---------------------------------------------------------

    def _check_module(self, node: ast.AST, name: str) -> None:
        if name == "meshlet" or name.startswith("meshlet."):
            return
        if self.in_type_checking and (name in TYPE_CHECKING_ONLY or name in ALLOWED_IMPORTS):
            return
        if name in ALLOWED_IMPORTS:
            return
        top = name.split(".")[0]
        if name == "typing" or top == "typing":
            self.add(node, "typing-outside-type-checking", "import %s outside `if TYPE_CHECKING:`" % name)
        elif name in FORBIDDEN_IMPORTS or top in FORBIDDEN_IMPORTS:
            why = FORBIDDEN_IMPORTS.get(name) or FORBIDDEN_IMPORTS[top]
            self.add(node, "forbidden-import", "%s: %s" % (name, why))
        else:
            self.add(node, "import-not-allowed", "%s is not on the allow-list (STYLE §3.4)" % name)

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            self._check_module(node, a.name)
            self.imports.append((node.lineno, a.name, self.in_try_import))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            if node.level > 1:
                base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
            self._check_module(node, target)
        self.imports.append((node.lineno, target, self.in_try_import))
        for a in node.names:  # `from . import _sodium` imports a submodule
            self.imports.append((node.lineno, target + "." + a.name, self.in_try_import))
        if target == "struct" and any(a.name == "Struct" for a in node.names):
            self.add(node, "struct-Struct", "struct.Struct is absent on MicroPython")
        if target == "dataclasses":
            self.add(node, "dataclass", "dataclasses are absent on MicroPython")

    # -- constructs ------------------------------------------------------

    def visit_Raise(self, node: ast.Raise) -> None:
        if node.cause is not None:
            self.add(node, "raise-from", "no exception chaining on MicroPython; pass the reason instead")
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr == "Struct" and isinstance(node.value, ast.Name) and node.value.id == "struct":
            self.add(node, "struct-Struct", "struct.Struct is absent on MicroPython")
        if node.attr == "dataclass":
            self.add(node, "dataclass", "dataclasses are absent on MicroPython")
        if node.attr.startswith("__") and not node.attr.endswith("__"):
            self.add(node, "name-mangling", "%s: MicroPython does not mangle __names" % node.attr)
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            if node.id in MISSING_BUILTINS and node.id not in self.bound:
                self.add(node, "missing-builtin", "%s is not a MicroPython builtin" % node.id)
            if node.id == "dataclass" and node.id not in self.bound:
                self.add(node, "dataclass", "dataclasses are absent on MicroPython")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        kws = [k.arg for k in node.keywords if k.arg is not None]
        flagged = [k for k in kws if k in ("signed", "offset")]
        for k in flagged:
            why = "%s= is refused by int.from_bytes/to_bytes/struct; pass it positionally" % k
            self.add(node, "keyword-%s" % k, why)
        rest = [k for k in kws if k not in flagged]
        f = node.func
        if rest:
            if isinstance(f, ast.Attribute) and f.attr in KW_REFUSING_METHODS:
                self.add(node, "builtin-kwargs", ".%s(%s=...) refuses keyword arguments" % (f.attr, rest[0]))
            elif isinstance(f, ast.Name) and f.id in KW_REFUSING_CALLS and f.id not in self.bound:
                self.add(node, "builtin-kwargs", "%s(%s=...) refuses keyword arguments" % (f.id, rest[0]))
        if isinstance(f, ast.Attribute) and f.attr in MISSING_METHODS:
            self.add(node, "missing-method", ".%s(): %s" % (f.attr, MISSING_METHODS[f.attr]))
        self.generic_visit(node)

    def visit_Slice(self, node: ast.Slice) -> None:
        if node.step is not None:
            self.add(node, "step-slice", "slices with a step are not implemented on MicroPython")
        self.generic_visit(node)

    def visit_Match(self, node: ast.AST) -> None:
        self.add(node, "match", "match/case is a SyntaxError on MicroPython")
        self.generic_visit(node)

    def _function(self, node: "ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda") -> None:
        if node.args.posonlyargs:
            self.add(node, "positional-only", "`/` parameters are a SyntaxError on MicroPython")
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._function(node)

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._function(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self.add(node, "async", "the core is synchronous (STYLE §1.7, §5.1)")
        self._function(node)

    def visit_Await(self, node: ast.Await) -> None:
        self.add(node, "async", "the core is synchronous")
        self.generic_visit(node)

    def visit_AsyncFor(self, node: ast.AsyncFor) -> None:
        self.add(node, "async", "the core is synchronous")
        self.generic_visit(node)

    def visit_AsyncWith(self, node: ast.AsyncWith) -> None:
        self.add(node, "async", "the core is synchronous")
        self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        if len(node.bases) > 1:
            self.add(node, "multiple-inheritance", "MicroPython's MRO is depth-first; use composition")
        methods = {s.name: s for s in node.body if isinstance(s, ast.FunctionDef)}
        if "__del__" in methods:
            self.add(methods["__del__"], "finalizer", "__del__ is never called on MicroPython")
        if "__init_subclass__" in methods:
            why = "__init_subclass__ is not called automatically"
            self.add(methods["__init_subclass__"], "init-subclass", why)
        for name in methods:
            if name.startswith("__") and not name.endswith("__"):
                self.add(methods[name], "name-mangling", "%s: MicroPython does not mangle __names" % name)
        bases = [b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases]
        if "__init__" in methods and any(b.endswith(("Error", "Exception")) for b in bases):
            if not _starts_with_super_init(methods["__init__"]):
                why = "an exception's __init__ must call super().__init__() first"
                self.add(methods["__init__"], "exception-init", why)
        self.generic_visit(node)


def _starts_with_super_init(fn: ast.FunctionDef) -> bool:
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # docstring
    if not body or not isinstance(body[0], ast.Expr) or not isinstance(body[0].value, ast.Call):
        return False
    f = body[0].value.func
    return (
        isinstance(f, ast.Attribute)
        and f.attr == "__init__"
        and isinstance(f.value, ast.Call)
        and isinstance(f.value.func, ast.Name)
        and f.value.func.id == "super"
    )


def lint_source(source: str, relpath: str) -> _Lint:
    tree = ast.parse(source, relpath)
    module, package = module_name(relpath)
    lint = _Lint(module, package, _bound_names(tree))
    lint.visit(tree)
    return lint


_CACHE: "dict[str, _Lint]" = {}


def _lint_tree() -> "dict[str, _Lint]":
    """Parses every core file once per session (both tests below share it)."""
    if not _CACHE:
        for path in core_files():
            _CACHE[rel(path)] = lint_source(path.read_text(encoding="utf-8"), rel(path))
    return _CACHE


def test_core_stays_in_the_micropython_subset():
    lints = _lint_tree()
    assert len(lints) >= 5, "found only %d files under %s" % (len(lints), CORE)
    report = []
    for relpath, lint in lints.items():
        if relpath in CPYTHON_BACKENDS:
            continue
        for line, rule, detail in sorted(lint.found):
            report.append("core/meshlet/%s:%d: %s: %s" % (relpath, line, rule, detail))
    assert not report, "%d subset violation(s):\n%s" % (len(report), "\n".join(report))


def test_only_the_facade_imports_a_cpython_backend_and_only_in_try_except_importerror():
    report = []
    for relpath, lint in _lint_tree().items():
        if relpath in CPYTHON_BACKENDS:
            continue
        for line, target, in_try in lint.imports:
            if target not in BACKEND_MODULES:
                continue
            if relpath == FACADE and target == FACADE_MAY_TRY and in_try:
                continue
            if relpath == FACADE and target == FACADE_MAY_TRY:
                why = "must be inside try: ... except ImportError:"
            elif relpath == FACADE:
                why = "the facade reaches CPython backends only through _cpython"
            else:
                why = "only the facade meshlet.crypto may import a CPython-only backend"
            report.append("core/meshlet/%s:%d: backend-import: %s: %s" % (relpath, line, target, why))
    assert not report, "\n".join(report)


# The lint itself is tested: a rule that never fires would keep nothing honest.

_BAD = '''
import socket
import typing
from dataclasses import dataclass
from struct import Struct
import struct
from .crypto import _sodium
async def f(a, /, b):
    await b
def g(x):
    raise ValueError("x") from x
s = struct.Struct(">H")
n = int.from_bytes(b"", "big", signed=False)
m = struct.unpack_from(">H", b"", offset=0)
t = b"abc"[::2]
u = "ab".removeprefix("a")
v = (5).bit_length()
w = b"a".decode("utf-8", errors="ignore")
match v:
    case 1:
        pass
class A(object, int):
    def __del__(self):
        self.__x = 1
class BadError(Exception):
    def __init__(self, r):
        self.r = r
        super().__init__(r)
try:
    pass
except ModuleNotFoundError:
    pass
'''

_GOOD = '''
"""A module in the subset."""
import struct
from ._compat import TYPE_CHECKING, const
from .errors import LocalProtocolError
if TYPE_CHECKING:
    from typing import Callable
try:
    from micropython import const
except ImportError:
    pass
_X = const(3)
class GoodError(LocalProtocolError):
    def __init__(self, reason: str) -> None:
        """Docstring first is fine."""
        super().__init__(reason)
        self.extra = 1
def f(data: bytes, *, k: int = 1) -> "tuple[int]":
    return struct.unpack_from(">H", data, 2)
def format(x):
    return x
y = format(b"ab"[1:2])
'''


def test_the_lint_fires_on_every_rule():
    rules = {rule for _, rule, _ in lint_source(_BAD, "bad.py").found}
    expected = {
        "forbidden-import", "typing-outside-type-checking", "dataclass", "struct-Struct", "async",
        "positional-only", "raise-from", "keyword-signed", "keyword-offset", "step-slice", "missing-method",
        "builtin-kwargs", "match", "multiple-inheritance", "finalizer", "name-mangling", "exception-init",
        "missing-builtin",
    }  # fmt: skip
    assert rules == expected, (sorted(expected - rules), sorted(rules - expected))
    imports = {t for _, t, _ in lint_source(_BAD, "bad.py").imports}
    assert "meshlet.crypto._sodium" in imports


def test_the_lint_passes_subset_code():
    lint = lint_source(_GOOD, "good.py")
    assert lint.found == [], lint.found


def test_relative_imports_resolve_like_python():
    src = "from . import _cpython\nfrom ..errors import CryptoError\nfrom ._pure import x25519\n"
    imports = {t for _, t, _ in lint_source(src, "crypto/__init__.py").imports}
    assert {"meshlet.crypto._cpython", "meshlet.errors", "meshlet.crypto._pure"} <= imports, imports
    imports = {t for _, t, _ in lint_source("from .crypto import _pyca\n", "key.py").imports}
    assert "meshlet.crypto._pyca" in imports, imports
