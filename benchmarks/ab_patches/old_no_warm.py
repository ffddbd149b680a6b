"""A/B patch: no warm_request_path() after a worker is forgotten (as before): the next
request's path writes its code's and classes' pages first, on the registrant's time."""

import sys

from bgwlab import postmaster as _imported

pm = sys.modules["__main__"] if hasattr(sys.modules["__main__"], "Postmaster") else _imported
pm.Postmaster.warm_request_path = lambda self, rw: None
