//! MQTT 3.1.1 packets (stub).
