"""Test helpers shared by pytest and the MicroPython runner (tools/mprun).

Only MicroPython-safe code lives here: no pytest, no typing at run time.
"""
