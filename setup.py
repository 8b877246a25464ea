"""Metadata and entry points live in setup.cfg; this file only declares the optional
C helper (mistral_sandbox.runner._native), which setuptools cannot declare there.

``optional=True``: without a C compiler or Python's headers the build skips it and
the sandbox isolates its children with the Python steps instead (same steps, same
report, more CPU per execution).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("mistral_sandbox.runner._native",
                             ["mistral_sandbox/runner/_native.c"], optional=True,
                             # bind every symbol when the zygote loads it, not on first
                             # call in each child (a lazy binding writes the GOT: a
                             # copy-on-write fault per child)
                             extra_link_args=["-Wl,-z,now"])])
