"""Test helpers shared by pytest and the MicroPython runner (tools/mprun).

What tests/core imports (clock, pair, raises, rand, vectors, ippackets), and garbage.py, is MicroPython-safe:
no pytest, no typing at run time. lab.py, control.py and tlscert.py serve CPython tests only (the
netns lab, an in-process control server, a TLS certificate) and say so.
"""
