"""An MQTT classification node: edgekit's runtime inside a long-running IoT service.

Run it with ``python -m iot_node --config node.toml`` (from ``apps/``); see README.md.
"""
