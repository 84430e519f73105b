"""panicd: a guest-panic handler for QEMU/KVM hosts.

A guest's pvpanic device tells QEMU its kernel panicked; QEMU emits GUEST_PANICKED on QMP;
panicd, connected to that QMP socket, runs the operator's policy: dump the guest's memory into
a file panicd owns, pause, restart or power off the guest, run a hook, and alert journald.
"""

__version__ = "0.1.0"
