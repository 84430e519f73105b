"""Windows bugchecks ("blue screens") as QEMU reports them: code, name, parameters, title.

A Windows guest started with `-cpu ...,hv-crash` reports its crash to the host through the
Hyper-V crash MSRs; QEMU passes them on in GUEST_PANICKED's `info` (events.HyperVCrashInfo):
arg1 is the bugcheck (STOP) code, arg2..arg5 its four parameters, exactly as Windows shows them
on its blue screen and in MEMORY.DMP:

    STOP 0x0000007E (0xFFFFFFFFC0000005, 0xFFFFF8012A2B3C4D, 0xFFFFD0012345E8A8, 0xFFFFD0012345E0E0)
    -> Bug Check 0x7E SYSTEM_THREAD_EXCEPTION_NOT_HANDLED

The names are Microsoft's (the public "Bug Check Code Reference"); `NAMES` holds the common
ones, and a code not in it keeps its number ("Bug Check 0x1F0"). A bugcheck's title is
Microsoft's own heading for the code (`Bug Check 0x7E SYSTEM_THREAD_EXCEPTION_NOT_HANDLED`,
searchable as it is), without the parameters: they hold addresses that change with every boot,
and the code is what groups one bug's crashes (signatures.py), as a Linux crash's title does.

Not every hyper-v report is a bugcheck: QAPI documents that a Linux guest on Hyper-V writes
an error code, its guest OS id (0x8100 in bits 48-63), ip, ax and sp. Such a report is told
apart by that id (`LINUX_OS_ID_VENDOR`; a Windows parameter there would be a non-canonical
address) and is not decoded: its raw arguments stay in the alert's PANIC_INFO.

Note: this machine's KVM has no Hyper-V emulation, so no real hv-crash guest runs here; the
mock guest sends the event exactly as qapi/run-state.json defines it (tests/test_windows*.py).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from panicd.events import PanicInfo

#: A Linux guest's Hyper-V guest OS id has this vendor in bits 48-63 (QAPI's
#: GuestPanicInformationHyperV documentation; Linux's HV_LINUX_VENDOR_ID).
LINUX_OS_ID_VENDOR = 0x8100

#: The crash title of every bugcheck starts so (CrashSighting.kind).
TITLE_KIND = "Bug Check"

#: Bugcheck codes and names, from Microsoft's Bug Check Code Reference.
NAMES: dict[int, str] = {
    0x00000001: "APC_INDEX_MISMATCH",
    0x00000003: "INVALID_AFFINITY_SET",
    0x0000000A: "IRQL_NOT_LESS_OR_EQUAL",
    0x00000012: "TRAP_CAUSE_UNKNOWN",
    0x00000018: "REFERENCE_BY_POINTER",
    0x00000019: "BAD_POOL_HEADER",
    0x0000001A: "MEMORY_MANAGEMENT",
    0x0000001E: "KMODE_EXCEPTION_NOT_HANDLED",
    0x00000020: "KERNEL_APC_PENDING_DURING_EXIT",
    0x00000024: "NTFS_FILE_SYSTEM",
    0x0000002E: "DATA_BUS_ERROR",
    0x0000003B: "SYSTEM_SERVICE_EXCEPTION",
    0x0000003D: "INTERRUPT_EXCEPTION_NOT_HANDLED",
    0x00000044: "MULTIPLE_IRP_COMPLETE_REQUESTS",
    0x0000004A: "IRQL_GT_ZERO_AT_SYSTEM_SERVICE",
    0x0000004E: "PFN_LIST_CORRUPT",
    0x00000050: "PAGE_FAULT_IN_NONPAGED_AREA",
    0x0000005C: "HAL_INITIALIZATION_FAILED",
    0x00000067: "CONFIG_INITIALIZATION_FAILED",
    0x0000006B: "PROCESS1_INITIALIZATION_FAILED",
    0x00000074: "BAD_SYSTEM_CONFIG_INFO",
    0x00000077: "KERNEL_STACK_INPAGE_ERROR",
    0x0000007A: "KERNEL_DATA_INPAGE_ERROR",
    0x0000007B: "INACCESSIBLE_BOOT_DEVICE",
    0x0000007E: "SYSTEM_THREAD_EXCEPTION_NOT_HANDLED",
    0x0000007F: "UNEXPECTED_KERNEL_MODE_TRAP",
    0x00000080: "NMI_HARDWARE_FAILURE",
    0x0000008E: "KERNEL_MODE_EXCEPTION_NOT_HANDLED",
    0x00000093: "INVALID_KERNEL_HANDLE",
    0x0000009C: "MACHINE_CHECK_EXCEPTION",
    0x0000009F: "DRIVER_POWER_STATE_FAILURE",
    0x000000A0: "INTERNAL_POWER_ERROR",
    0x000000A5: "ACPI_BIOS_ERROR",
    0x000000BE: "ATTEMPTED_WRITE_TO_READONLY_MEMORY",
    0x000000C1: "SPECIAL_POOL_DETECTED_MEMORY_CORRUPTION",
    0x000000C2: "BAD_POOL_CALLER",
    0x000000C4: "DRIVER_VERIFIER_DETECTED_VIOLATION",
    0x000000C5: "DRIVER_CORRUPTED_EXPOOL",
    0x000000C7: "TIMER_OR_DPC_INVALID",
    0x000000CA: "PNP_DETECTED_FATAL_ERROR",
    0x000000CE: "DRIVER_UNLOADED_WITHOUT_CANCELLING_PENDING_OPERATIONS",
    0x000000D0: "DRIVER_CORRUPTED_MMPOOL",
    0x000000D1: "DRIVER_IRQL_NOT_LESS_OR_EQUAL",
    0x000000D5: "DRIVER_PAGE_FAULT_IN_FREED_SPECIAL_POOL",
    0x000000D6: "DRIVER_PAGE_FAULT_BEYOND_END_OF_ALLOCATION",
    0x000000DE: "POOL_CORRUPTION_IN_FILE_AREA",
    0x000000E2: "MANUALLY_INITIATED_CRASH",
    0x000000EA: "THREAD_STUCK_IN_DEVICE_DRIVER",
    0x000000ED: "UNMOUNTABLE_BOOT_VOLUME",
    0x000000EF: "CRITICAL_PROCESS_DIED",
    0x000000F4: "CRITICAL_OBJECT_TERMINATION",
    0x000000F5: "FLTMGR_FILE_SYSTEM",
    0x000000F7: "DRIVER_OVERRAN_STACK_BUFFER",
    0x000000FC: "ATTEMPTED_EXECUTE_OF_NOEXECUTE_MEMORY",
    0x000000FE: "BUGCODE_USB_DRIVER",
    0x00000101: "CLOCK_WATCHDOG_TIMEOUT",
    0x00000109: "CRITICAL_STRUCTURE_CORRUPTION",
    0x00000116: "VIDEO_TDR_FAILURE",
    0x00000117: "VIDEO_TDR_TIMEOUT_DETECTED",
    0x00000119: "VIDEO_SCHEDULER_INTERNAL_ERROR",
    0x00000124: "WHEA_UNCORRECTABLE_ERROR",
    0x00000127: "PAGE_NOT_ZERO",
    0x0000012B: "FAULTY_HARDWARE_CORRUPTED_PAGE",
    0x00000133: "DPC_WATCHDOG_VIOLATION",
    0x00000139: "KERNEL_SECURITY_CHECK_FAILURE",
    0x0000013A: "KERNEL_MODE_HEAP_CORRUPTION",
    0x00000144: "BUGCODE_USB3_DRIVER",
    0x00000154: "UNEXPECTED_STORE_EXCEPTION",
    0x000001CA: "SYNTHETIC_WATCHDOG_TIMEOUT",
    # The "_M" variants: the same bugchecks, as some Windows versions report them.
    0x1000007E: "SYSTEM_THREAD_EXCEPTION_NOT_HANDLED_M",
    0x1000007F: "UNEXPECTED_KERNEL_MODE_TRAP_M",
    0x1000008E: "KERNEL_MODE_EXCEPTION_NOT_HANDLED_M",
    0x100000EA: "THREAD_STUCK_IN_DEVICE_DRIVER_M",
    0xC000021A: "WINLOGON_FATAL_ERROR",
    0xDEADDEAD: "MANUALLY_INITIATED_CRASH1",
}


class BugCheck(BaseModel):
    """One bugcheck: its code, the code's name (None when panicd's table lacks it), and its
    four parameters. What the incident record keeps (`IncidentRecord.bugcheck`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    code: int = Field(ge=0, le=2**64 - 1)
    name: str | None = None
    parameters: tuple[int, int, int, int]

    @property
    def code_text(self) -> str:
        """`0x0000007E`: as Windows prints a STOP code (eight hex digits, upper case)."""
        return f"0x{self.code:08X}"

    @property
    def title(self) -> str:
        """Microsoft's heading for the code: `Bug Check 0x7E SYSTEM_THREAD_EXCEPTION_NOT_HANDLED`
        (`Bug Check 0x1F0` for a code not in `NAMES`)."""
        heading = f"{TITLE_KIND} 0x{self.code:X}"
        return f"{heading} {self.name}" if self.name else heading

    @property
    def parameters_text(self) -> str:
        """The four parameters as the blue screen shows them, space-separated: `0xFFFF... 0x0...`."""
        return " ".join(f"0x{p:016X}" for p in self.parameters)

    def describe(self) -> str:
        """One line for a person: `Bug Check 0x7E SYSTEM_THREAD_... (0xFFFF..., 0x..., ...)`."""
        return f"{self.title} ({', '.join(f'0x{p:X}' for p in self.parameters)})"


def decode(info: PanicInfo | None) -> BugCheck | None:
    """The bugcheck a GUEST_PANICKED's `info` reports; None when it reports none (no info,
    another type, malformed arguments, or a Linux guest's Hyper-V crash report)."""
    if info is None:
        return None
    crash = info.hyper_v()
    if crash is None:
        return None
    if crash.arg2 >> 48 == LINUX_OS_ID_VENDOR:
        return None  # a Linux guest: arg2 is its guest OS id, not a bugcheck parameter
    return BugCheck(code=crash.arg1, name=NAMES.get(crash.arg1),
                    parameters=(crash.arg2, crash.arg3, crash.arg4, crash.arg5))
