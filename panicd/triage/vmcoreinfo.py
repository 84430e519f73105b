"""VMCOREINFO: `KEY=value` lines the guest kernel publishes for dump readers.

SYMBOL(name)=hex address, OFFSET(struct.member)=decimal, SIZE(struct)=decimal,
NUMBER(name)=decimal (NUMBER(phys_base) may be negative), KERNELOFFSET=hex, OSRELEASE=text.
QEMU's vmcoreinfo device puts it in the dump as a note named "VMCOREINFO".
"""

from __future__ import annotations

from panicd.triage import NoVmcoreinfo, TriageError
from panicd.triage.elf import Note

MAX_BYTES = 64 * 1024


class Vmcoreinfo:
    def __init__(self, text: str) -> None:
        self.values: dict[str, str] = {}
        for line in text[:MAX_BYTES].splitlines():
            key, sep, value = line.partition("=")
            if sep:
                self.values[key.strip()] = value.strip()

    @classmethod
    def from_notes(cls, notes: list[Note]) -> Vmcoreinfo:
        for note in notes:
            if note.name == "VMCOREINFO":
                return cls(note.desc.decode("ascii", "replace"))
        raise NoVmcoreinfo

    def _get(self, key: str) -> str:
        try:
            return self.values[key]
        except KeyError:
            raise TriageError(f"VMCOREINFO has no {key}") from None

    def _int(self, key: str, base: int) -> int:
        try:
            return int(self._get(key), base)
        except ValueError:
            raise TriageError(f"VMCOREINFO {key} is not a number") from None

    @property
    def osrelease(self) -> str:
        return self.values.get("OSRELEASE", "unknown")

    def symbol(self, name: str) -> int:
        return self._int(f"SYMBOL({name})", 16)

    def offset(self, name: str) -> int:
        return self._int(f"OFFSET({name})", 10)

    def size(self, name: str) -> int:
        return self._int(f"SIZE({name})", 10)

    def number(self, name: str) -> int:
        return self._int(f"NUMBER({name})", 10)

    def has(self, key: str) -> bool:
        return key in self.values
