"""The one place tune/ reaches into Ray's and Optuna's internals; tests/test_internals.py notices
a release that changes them."""
