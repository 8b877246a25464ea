"""A tenant-source action: this file is read by the caller and compiled only inside
the sandboxed child.

    mistral-sandbox run --source examples/greet_source.py --class Greet -p name=Ada
"""

from mistral_sandbox.api import Action


class Greet(Action):
    """Greet ``name`` on behalf of the calling user."""

    def __init__(self, name):
        self.name = name

    def run(self, context):
        return "Hello %s, from %s" % (self.name, context.security.user_name or "nobody")
