"""The engine alone, for ab_launch.py's ``floor`` kind: a worker whose entry point writes
one byte into a FIFO named in its ``extra`` bytes and returns.

The leader registers four of these (notify=True, as ParallelContext does) and reads four
bytes: "4 workers forked and each having run its first line", with no segment, queue or
latch -- the floor under ``attach`` on this machine.  Preloaded by the postmaster.
"""

import os

from bgwlab import worker as _bgw


def up(main_arg: int) -> None:
    fd = os.open(_bgw.current().extra, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, b"u")
    finally:
        os.close(fd)
