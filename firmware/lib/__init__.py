"""Modules shared by the firmware of Anju's devices (copied to /lib on the ESP32; a package only for CPython)."""
