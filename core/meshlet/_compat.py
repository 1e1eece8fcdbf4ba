"""The one place where the core notices which Python it runs on.

`TYPE_CHECKING` is a plain constant that mypy treats as true, so typing-only
imports can sit under it without MicroPython ever seeing `typing`. `const`
folds module-private constants at compile time on MicroPython and is the
identity on CPython.
"""

TYPE_CHECKING = False  # mypy treats this name as true; both runtimes skip the block

if TYPE_CHECKING:
    from typing import TypeVar

    _T = TypeVar("_T")

    def const(x: _T) -> _T: ...

else:
    try:
        from micropython import const  # folded at compile time on MicroPython
    except ImportError:  # CPython

        def const(x):
            return x
