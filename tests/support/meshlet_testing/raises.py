"""`raises(cls, reason, fn, *args)`: the one assertion every bad-input test makes.

The core's errors carry a stable `reason`, so a test says both which kind of
error and which reason it expects. pytest.raises would do, but tests/core
also runs under MicroPython, where there is no pytest.
"""


def raises(cls, reason, fn, *args):  # type: ignore[no-untyped-def]
    """Calls fn(*args); asserts it raised `cls` with `reason`; returns the error."""
    try:
        fn(*args)
    except cls as e:
        assert e.reason == reason, (e.reason, reason)
        return e
    raise AssertionError("expected %s(%r)" % (cls.__name__, reason))
