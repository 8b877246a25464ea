"""An action that reuses other actions through the runner (each runs in its own
sandboxed child, under its own limits):

    mistral-sandbox run --source examples/reuse_actions.py --class EchoThenSleep \
        --config-file examples/nested.conf -p text=hello
"""

from mistral_sandbox.api import Action, NestedActionError
from mistral_sandbox.api import utils


class EchoThenSleep(Action):
    """Echo ``text`` with std.echo, then sleep ``seconds`` with std.sleep."""

    def __init__(self, text, seconds=0.1):
        self.text = text
        self.seconds = seconds

    def run(self, context):
        echoed = utils.get_action("std.echo", output=self.text).run(context)
        try:
            utils.run_action("std.sleep", seconds=self.seconds)
            slept = True
        except NestedActionError as exc:  # refused by the policy, or timed out...
            slept = "%s: %s" % (exc.reason, exc.message)
        return {"echo": echoed.data, "slept": slept}
