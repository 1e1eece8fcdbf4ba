"""A clock the test steps by hand; the core only ever sees its `now_ms`."""


class FakeClock:
    def __init__(self, now_ms: int = 0) -> None:
        self.now_ms = now_ms

    def advance(self, ms: int) -> int:
        """Moves time forward by `ms` and returns the new now_ms."""
        if ms < 0:
            raise ValueError("time only moves forward")
        self.now_ms += ms
        return self.now_ms
