"""audit diff and audit record: do two versions of the code (or the code and a recorded
reference) train bit-identically, and where do they first part?"""
