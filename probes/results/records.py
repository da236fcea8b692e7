"""The trace's record kinds and the runs' statuses, defined once: the runs write them, the
engines read them, the result model and the reports name them (plain strings, as in the JSON)."""


class Record:
    """The ``type`` of each line of a trace (:mod:`audit.probes.run.trace`)."""

    LOADING = "loading"  # the run starts loading its target (the watchdog's clock starts)
    ENV = "env"  # the machine, the versions, the flags, where the modules were made
    PARAMS = "params"  # the parameter and module names: the header of the steps
    INIT = "init"  # every parameter before the first step
    STEP = "step"  # one training step's fingerprints
    END = "end"  # how the run ended (its ``status``)
    CUDA_OPS = "cuda_ops"  # the scan of the ops for CUDA nondeterminism
    DIST = "dist"  # a rank's place in a distributed run
    REPLICA = "replica"  # a rank's synchronized buffers at one step
    SAMPLERS = "samplers"  # what a rank's DistributedSamplers did
    PLAN = "plan"  # audit resume: the steps, the checkpoint step, the epoch length
    STATE = "state"  # audit resume: the training state at the checkpoint
    SPAWN = "spawn"  # script mode: the ranks the script started with torch.multiprocessing


class Status:
    """How a run ended: an ``end`` record's ``status``, :attr:`RunInfo.status`, a variance
    run's ``status``."""

    OK = "ok"  # the steps asked for were made
    ENDED_EARLY = "ended_early"  # the script returned, or exited with status 0, sooner
    EXITED = "exited"  # sys.exit / os._exit with another status
    CRASHED = "crashed"  # the training raised
    TARGET_ERROR = "target_error"  # the target could not be loaded (no step was made)
    KILLED = "killed"  # a signal ended the process
    TIMED_OUT = "timed_out"  # no step for the no-progress limit: the audit ended it
    INTERRUPTED = "interrupted"  # an interrupt ended the audit
    NONFINITE = "nonfinite"  # audit variance: a metric is not finite
