"""One real stack per session: RabbitMQ, Mistral 23's API and engine, `mistral-sandbox
serve` as the executor."""

import pytest

from tests.integration.stack import MistralStack, RabbitMQ

POLICY = """
actions:
  itest.hog: {memory: 128MiB}
"""


@pytest.fixture(scope="session")
def rabbitmq():
    broker = RabbitMQ()
    broker.ensure()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def stack(rabbitmq):
    s = MistralStack(policy=POLICY, sandbox_options="max_workers = 4\nshutdown_grace = 5\n",
                     env={"ITEST_EXECUTOR_SECRET": "s3cr3t-of-the-executor"})
    try:
        s.start_mistral()
        s.start_executor("serve")
        yield s
    finally:
        s.stop()
