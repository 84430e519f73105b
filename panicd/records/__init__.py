"""The typed records (a package from here on: records/incident.py holds them all for now)."""

from panicd.records.incident import *  # noqa: F403
from panicd.records.incident import _Record as _Record
