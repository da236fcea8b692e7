"""What every engine uses to train the user's code: fresh processes and their specs
(``processes``, ``spec``, ``launcher``, ``program``), the environment, target loading, the
training loop, traces and fingerprints, comparing traces, lockstep replay, knobs, seeding and
escape logs, ranks and rendezvous. It imports nothing of ``script``, ``child`` or the engines."""
