"""PC legacy devices: the 8250/16550A UART, the i8042 reset line, ACPI PM registers."""
