"""Session-wide settings of the suite.

* One CPU thread per process unless the caller chose otherwise: the end-to-end tests start two
  to four training processes at once, and on a small CI machine (two cores) torch's default of
  one OpenMP thread per core in each of them only makes the threads wait on each other. It
  also keeps the knob plans the same as on a developer's machine (a thread count above one adds
  the ``one_thread`` knob to every attribution, and so a pair of processes per audit).
* Hypothesis without its per-example deadline: the machine is shared with training processes,
  so an example's wall time says nothing about the code. The number of examples is each test's
  own (``@settings``) or Hypothesis's default, unchanged.
"""
import os

from hypothesis import settings

os.environ.setdefault("OMP_NUM_THREADS", "1")

settings.register_profile("suite", deadline=None)
settings.load_profile("suite")
