"""Action discovery (parent side) and loading (child side), plus the std actions.

* :mod:`.catalog` lists entry points from distribution metadata and resolves a
  reference to an importable target — without importing any action code.
* :mod:`.loader` imports that target, checks it is an action, binds the
  parameters and builds the context; it runs only inside a sandboxed child.
"""
