"""liveng: indestructible Debian installations for the Raspberry Pi and the PC."""

__version__ = "0.1.0"
