"""Hyper-V crash reporting (`-cpu ...,hv-crash`), as a Windows guest on KVM uses it.

A Windows guest that bugchecks writes its STOP code and the code's four parameters to the
Hyper-V crash MSRs HV_X64_MSR_CRASH_P0..P4 (0x40000100..0x40000104), then CRASH_NOTIFY to
HV_X64_MSR_CRASH_CTL (0x40000105). KVM exits to QEMU (KVM_SYSTEM_EVENT_CRASH), and QEMU runs
its panic action with `x86_cpu_get_crash_info`'s GuestPanicInformation: the five MSRs, as they
are, in a `hyper-v` member (qapi/run-state.json, GuestPanicInformationHyperV)::

    {"event": "GUEST_PANICKED",
     "data": {"action": "pause", "info": {"type": "hyper-v", "arg1": 126, "arg2": ..., "arg5": ...}}}

Members in QAPI's order: the union's base (`type`), then arg1..arg5, unsigned decimal numbers.
The shape is checked against the real QEMU's own schema (query-qmp-schema) in
tests/test_windows_contract.py. This machine's KVM has no Hyper-V emulation, so the mock is
the only guest here that sends it.
"""

from __future__ import annotations

from typing import Any

#: HV_X64_MSR_CRASH_P0..P4 and HV_X64_MSR_CRASH_CTL.
CRASH_P0 = 0x40000100
CRASH_CTL = 0x40000105
UINT64_MAX = 2**64 - 1


def crash_info(code: int, parameters: tuple[int, int, int, int] = (0, 0, 0, 0)) -> dict[str, Any]:
    """GuestPanicInformation for a bugcheck `code` with its four `parameters`, as QEMU sends it."""
    values = (code, *parameters)
    if len(values) != 5 or not all(isinstance(v, int) and 0 <= v <= UINT64_MAX for v in values):
        raise ValueError("a Hyper-V crash report is five uint64 MSR values")
    return {"type": "hyper-v", **{f"arg{n}": value for n, value in enumerate(values, 1)}}
