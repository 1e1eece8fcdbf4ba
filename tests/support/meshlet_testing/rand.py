"""Deterministic stand-ins for the randomness the core is given."""


class FakeRandom:
    """A `random_bytes(n)` callable that returns a reproducible stream.

    The stream is a counter run through SHA-256, so tests get bytes that look
    random, differ per seed, and are the same on every run and runtime.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.counter = 0

    def __call__(self, n: int) -> bytes:
        import hashlib

        out = bytearray()
        while len(out) < n:
            block = self.seed.to_bytes(8, "big") + self.counter.to_bytes(8, "big")
            out.extend(hashlib.sha256(block).digest())
            self.counter += 1
        return bytes(out[:n])
