"""Planted: a target file that does not parse."""


def build():
    return {"model": None,  # the closing brace is missing
