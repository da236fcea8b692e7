"""audit resume: does a run stopped and resumed from the checkpoint reproduce the uninterrupted
run, and which state did the checkpoint miss?"""
