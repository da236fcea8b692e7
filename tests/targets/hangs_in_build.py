"""Planted: the builder blocks (a stand-in for a deadlocked loader or a lock never released)."""
import time

from common import mlp, tiny_data


def wait_for_data():
    time.sleep(3600)  # STUCK HERE
    return tiny_data()


def build():
    return {"model": mlp(), "data": wait_for_data()}
