"""PC legacy devices: the 8250/16550A UART and the i8042 reset line."""
