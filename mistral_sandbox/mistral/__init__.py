"""Mistral integration: the executor service (``mistral-sandbox serve``), the child-side
runtime that rebuilds the actions Mistral sends, and an embeddable executor.

Everything here that imports Mistral does so lazily: Mistral is an optional extra
(``pip install mistral-sandbox[mistral]``).
"""
