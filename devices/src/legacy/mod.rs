//! Legacy PC devices: 8250 serial, i8042 reset line, debug-exit port.
