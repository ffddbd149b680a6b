"""A/B patch: the event writer's encoding as it was before issue 12's encoder change.

Old: every event encodes its kind and source into the line anew and its detail through
the general ``encode_value`` (an isinstance chain per value, ``str.translate`` on every
string).  Preloaded by a postmaster, it patches ``EventWriter`` there (the postmaster's
events and, through ``with_source``, its workers').  ``ab.py`` also hands the A cluster's
registrant writer to ``registrant_writer`` (its ``registered`` and ``woke`` events), so
that all three sources of A encode the old way.
"""

import os
import sys
import time

from bgwlab import eventlog
from bgwlab.eventlog import EventWriter, encode_value


def emit(self, kind, slot=-1, generation=0, t_ns=None, **detail):
    t = time.monotonic_ns() if t_ns is None else t_ns
    if not self.enabled:
        return t
    d = encode_value(detail) if detail else "{}"
    line = (f'{{"t_ns":{t},"kind":"{kind}","source":"{self.source}","pid":{os.getpid()},'
            f'"slot":{slot},"generation":{generation},"detail":{d}}}\n')
    try:
        os.write(self.fd, line.encode())
    except OSError:
        pass
    return t


def line(self, kind, slot=-1, generation=0, t_ns=None, **detail):
    if not self.enabled:
        return b""
    t = time.monotonic_ns() if t_ns is None else t_ns
    d = encode_value(detail) if detail else "{}"
    return (f'{{"t_ns":{t},"kind":"{kind}","source":"{self.source}","pid":{os.getpid()},'
            f'"slot":{slot},"generation":{generation},"detail":{d}}}\n').encode()


class OldEventWriter(EventWriter):
    __slots__ = ()


OldEventWriter.emit = emit
OldEventWriter.line = line


def registrant_writer(writer: EventWriter) -> EventWriter:
    """The registrant's writer of cluster A, switched to the old encoding (same fd)."""
    writer.__class__ = OldEventWriter
    return writer


if hasattr(sys.modules["__main__"], "Postmaster"):  # in a postmaster: patch the class itself
    eventlog.EventWriter.emit = emit
    eventlog.EventWriter.line = line
