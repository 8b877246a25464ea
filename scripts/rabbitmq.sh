#!/usr/bin/env bash
# Start or stop a RabbitMQ bound to 127.0.0.1 (no systemd needed), for the integration tests.
# Usage: scripts/rabbitmq.sh start|stop|status
set -euo pipefail
export RABBITMQ_NODENAME=rabbit@localhost RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
       ERL_EPMD_ADDRESS=127.0.0.1 \
       RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
case "${1:-}" in
    start)
        rabbitmq-server -detached
        for _ in $(seq 1 120); do
            if rabbitmqctl -q status >/dev/null 2>&1; then
                exec rabbitmqctl -q await_startup
            fi
            sleep 0.5
        done
        echo "rabbitmq.sh: RabbitMQ did not start within 60 s" >&2
        exit 1
        ;;
    stop)
        rabbitmqctl -q stop >/dev/null 2>&1 || true
        for _ in $(seq 1 60); do pgrep -u rabbitmq -x beam.smp >/dev/null || break; sleep 0.5; done
        pkill -u rabbitmq -x epmd 2>/dev/null || true
        ;;
    status)
        rabbitmqctl -q status >/dev/null 2>&1
        ;;
    *)
        echo "usage: $0 start|stop|status" >&2; exit 2;;
esac
