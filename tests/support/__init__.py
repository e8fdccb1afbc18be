"""Helpers the tests share; fixtures stay in the conftest.py files, which import from here."""
