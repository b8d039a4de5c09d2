"""
A worker application for one test ([workers] app): the real Clickpass web
application, built the way every worker builds it, followed by a look at
python3-openid's randomness in that worker process, logged as one line.
Production never imports this.
"""

from __future__ import annotations

import os
import random
from typing import Any

from openid import cryptutil
from openid.dh import DiffieHellman
from openid.store.nonce import mkNonce

from twisted.logger import Logger
from twisted.web.server import Site

from clickpass.worker import _default_app

log = Logger()

LINE = "randomness in worker {pid}: os={os} random_untouched={untouched}"


def build(reactor: Any, settings: Any, storage: Any, secret: bytes) -> Site:
    site = _default_app(reactor, settings, storage, secret)
    before = random.getstate()
    DiffieHellman.fromDefaults()
    mkNonce()
    log.info(
        LINE,
        pid=os.getpid(),
        # Not Python's shared generator (the library's own choice).
        os=cryptutil.randrange is not random.randrange,
        untouched=random.getstate() == before,
    )
    return site
