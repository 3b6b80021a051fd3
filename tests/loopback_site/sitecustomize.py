"""Imported by Python at start-up when this folder is on PYTHONPATH: see tests/loopback.py."""

from tests.loopback import install

install()
