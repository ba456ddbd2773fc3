//! Link-layer framing between the wire and the core, sans-IO.
//!
//! Owns: turning a byte stream (a serial line) into MQTT-SN frames and back. Must never: open a
//! port, read a clock, block, or panic on input. The shell's transport tasks do the I/O and
//! drive these codecs.

pub mod serial;
