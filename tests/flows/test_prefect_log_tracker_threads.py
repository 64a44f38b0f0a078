"""Two branches' Prefect log trackers made at the same time (their tasks start together, in threads of one process)
install one API handler on the shared logger, not two: with two, every training line of every later step reached
the Prefect run log twice."""
from __future__ import annotations

import logging
import threading
import uuid

import prefect.logging.handlers

from flows.prefect_log_tracker import LOGGER_NAME, PrefectLogTracker

WAIT_S = 1.0


def test_trackers_made_at_once_by_two_branches_install_one_api_handler(monkeypatch):
    logger = logging.getLogger(LOGGER_NAME)
    saved = (list(logger.handlers), logger.level, logger.propagate)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    made, both_checked = [], threading.Barrier(2)

    class Handler(logging.Handler):  # APILogHandler stand-in: each branch makes its handler once both have looked
        def __init__(self):
            super().__init__()
            made.append(self)
            try:
                both_checked.wait(WAIT_S)
            except threading.BrokenBarrierError:  # the other branch is not looking at the same time (serialised)
                pass

    monkeypatch.setattr(prefect.logging.handlers, "APILogHandler", Handler)
    try:
        branches = [threading.Thread(target=PrefectLogTracker, args=(uuid.uuid4(), uuid.uuid4())) for _ in range(2)]
        for branch in branches:
            branch.start()
        for branch in branches:
            branch.join(30)
        installed = [h for h in logger.handlers if isinstance(h, Handler)]
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        for handler in saved[0]:
            logger.addHandler(handler)
        logger.setLevel(saved[1])
        logger.propagate = saved[2]
    assert len(installed) == 1
